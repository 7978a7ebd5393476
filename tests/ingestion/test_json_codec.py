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
