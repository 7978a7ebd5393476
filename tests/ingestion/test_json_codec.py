"""The hot-path JSON codec gives what the standard json module gives (value or exception)."""

from __future__ import annotations

import dataclasses
import datetime
import json
import uuid

import pytest

from plugin_server.json_codec import dumps_text, loads

DOCUMENTS = [
    b'{"a":1,"b":[true,false,null],"c":{"d":"\\u00e9\\ud83d\\ude00"}}',
    b'{"a":1,"a":2}',
    b'\n {"a": 1e5, "b": -0.0, "c": 0.1, "d": 5e-324, "e": 1.7976931348623157e308}\n',
    b'{"big":123456789012345678901234567890}',
    b'{"low":-9223372036854775809,"high":18446744073709551616}',
    b'{"text":"1234567890123456789012"}',
    b'{"a":NaN,"b":Infinity,"c":-Infinity}',
    b'{"a":1e400}',
    b'{"a":"\\ud800","\\udfff":1}',
    b'{"a":"\\u0000"}',
    '{"a":"é"}'.encode("utf-16"),
    b'\xef\xbb\xbf{"a":1}',
    b'{"a":"\xff"}',
    b'{"a":"x\ty"}',
    b'[1,]',
    b'{"a":1} x',
    b"",
]


def _outcome(read, data):  # type: ignore[no-untyped-def]
    try:
        return ("value", repr(read(data)))
    except Exception as error:  # noqa: BLE001 -- the exception type is what is compared
        return ("error", type(error).__name__)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_loads_is_json_loads(document: bytes) -> None:
    """Bytes and text alike: the same value (exact big integers, NaN, lone surrogates) or the same error."""
    assert _outcome(loads, document) == _outcome(json.loads, document)
    try:
        text = document.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert _outcome(loads, text) == _outcome(json.loads, text)


def test_loads_uses_the_given_fallback_for_what_orjson_refuses() -> None:
    """A document orjson refuses is read by the fallback, with its errors."""
    seen: list[object] = []

    def fallback(data: object) -> object:
        seen.append(data)
        return "fallback"

    assert loads(b'{"a":1}', fallback) == {"a": 1} and seen == []
    assert loads(b'{"a":NaN}', fallback) == "fallback" and seen == [b'{"a":NaN}']


@dataclasses.dataclass
class _Point:
    x: int


VALUES = [
    [{"event": "$pageview", "properties": {"n": 1, "f": 1.5, "e": 1e16, "t": "é😀", "nested": [None, True, {"k": "v"}]}}],
    [{"when": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc), "day": datetime.date(2026, 1, 2)}],
    [{"id": uuid.UUID("99abcdef-1234-4321-0000-dcba87654321"), "point": _Point(1), "tuple": (1, 2)}],
    [{1: "int key", "big": 2**70, "neg": -(2**70)}],
]


@pytest.mark.parametrize("value", VALUES)
def test_dumps_text_reads_back_as_json_dumps(value: object) -> None:
    """The text means what json.dumps(value, ensure_ascii=False, default=str) means."""
    assert json.loads(dumps_text(value)) == json.loads(json.dumps(value, ensure_ascii=False, default=str))


def test_dumps_text_leaves_a_lone_surrogate_to_json() -> None:
    """A lone surrogate is left to json, which encodes it (and Postgres refuses it later, as before)."""
    assert dumps_text({"a": "\ud800"}) == json.dumps({"a": "\ud800"}, ensure_ascii=False)


@pytest.mark.parametrize(
    "event",
    [
        {"a": 1, "b": "é", "c": [1.5, 1e16, True]},
        {"a": None},
        {"a": float("nan")},
        {"a": [float("-inf")]},
        {"a": "x\x00"},
        {"a": "\\u0000 as text"},
        {"a": "\ud800"},
        {1: 2},
        {"big": 2**70},
        {"when": datetime.datetime(2026, 1, 1)},
        {"id": uuid.UUID("99abcdef-1234-4321-0000-dcba87654321")},
        {"a": "é" * 300},
        {"a": [0.1] * 40, "b": {"k": "v" * 30}},
    ],
)
def test_needs_sanitising_gives_json_verdict(event: dict) -> None:
    """The orjson fast path of check_event's test says what the json one says: dirty or not, and
    over a size limit or not, for limits around the event's size."""
    from plugin_server.ingestion import prepare

    def json_verdict(limit: int) -> tuple[bool, bool]:
        try:
            text = json.dumps(event, ensure_ascii=False, allow_nan=False, default=str)
        except ValueError:
            return True, len(json.dumps(event, ensure_ascii=False, default=str).encode("utf-8", "replace")) > limit
        dirty = "\\u0000" in text
        try:
            size = len(text) if dirty else len(text.encode("utf-8"))
        except UnicodeEncodeError:
            return True, len(text.encode("utf-8", "replace")) > limit
        return dirty, size > limit

    exact = len(json.dumps(event, ensure_ascii=False, default=str).encode("utf-8", "replace"))
    for limit in (1, exact - 1, exact, exact + 1, 2 * exact, 3 * exact, 10 * exact):
        dirty, size = prepare._needs_sanitising(event, limit)
        assert (dirty, size > limit) == json_verdict(limit), limit
