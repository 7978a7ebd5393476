"""UUIDT and uuid checks (spec: ingestion.md §11; acceptance.md "Utilities")."""

from __future__ import annotations

import uuid

import pytest

from plugin_server.ingestion.uuidt import UUIDTGenerator, is_valid_uuid, render_for_error


def test_layout_is_time_series_then_random() -> None:
    """6 bytes of Unix ms, 2 bytes of per-millisecond series (from 0), 8 random bytes."""
    generate = UUIDTGenerator(clock_ms=lambda: 0x0179_7A2B_3C4D)
    first, second = generate(), generate()
    assert first.bytes[:6] == bytes.fromhex("01797a2b3c4d") and first.bytes[6:8] == b"\x00\x00"
    assert second.bytes[6:8] == b"\x00\x01"
    assert first.bytes[8:] != second.bytes[8:]


def test_series_restarts_each_millisecond_and_ids_sort_by_time() -> None:
    """A new millisecond starts the series at 0 again; later ids sort after earlier ones."""
    now = [1000]
    generate = UUIDTGenerator(clock_ms=lambda: now[0])
    ids = [generate.text() for _ in range(3)]
    now[0] += 1
    later = generate()
    assert later.bytes[6:8] == b"\x00\x00"
    assert sorted([*ids, str(later)]) == [*ids, str(later)]


def test_text_is_lower_case_8_4_4_4_12() -> None:
    """The text form parses back to the same uuid and is lower case."""
    text = UUIDTGenerator().text()
    assert str(uuid.UUID(text)) == text and is_valid_uuid(text)


@pytest.mark.parametrize("text", ["99aBcDeF-1234-4321-0000-dcba87654321", "99abcdef-1234-4321-0000-dcba87654321"])
def test_valid_uuid_texts(text: str) -> None:
    """Hex in any case, hyphens in place: valid, and its bytes and integer are those of the text."""
    assert is_valid_uuid(text)
    assert uuid.UUID(text).bytes == bytes.fromhex("99abcdef123443210000dcba87654321")
    assert uuid.UUID(text).int == 0x99ABCDEF123443210000DCBA87654321


@pytest.mark.parametrize(
    "text",
    ["99aBcDeF-1234-4321-WXyz-dcba87654321", "99aBcDeF123443210000dcba87654321", "99aBcDeF-1234-4321-0000-dcba876543210",
     "99aBcDeF-1234-4321-0000-dcba8765432", "99abcdef-1234-4321-0000-dcba87654321\n", "", None, 12],
    ids=["non-hex", "no hyphens", "one too many", "one too few", "trailing newline", "empty", "null", "number"],
)
def test_invalid_uuid_texts(text: object) -> None:
    """Anything else is not a uuid."""
    assert not is_valid_uuid(text)


def test_render_for_error() -> None:
    """Values are shown in errors as the original rendered them."""
    assert [render_for_error(value) for value in (None, True, "x", 5, 3.0, {"a": 1}, [1, None])] == [
        "null", "true", "x", "5", "3", "[object Object]", "1,"
    ]


def test_random_parts_differ_across_blocks_and_after_fork() -> None:
    """Random bytes are read in blocks: ids stay distinct across block ends, and a forked child
    does not repeat the random parts left in its parent's block."""
    import os

    generate = UUIDTGenerator(clock_ms=lambda: 1)
    parts = [generate().bytes[8:] for _ in range(1500)]
    assert len(set(parts)) == len(parts)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send the next random part and leave at once
        os.write(write, generate().bytes[8:])
        os._exit(0)
    os.close(write)
    child_part = os.read(read, 8)
    os.close(read)
    os.waitpid(pid, 0)
    assert child_part != generate().bytes[8:]
