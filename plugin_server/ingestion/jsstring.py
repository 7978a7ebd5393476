"""JavaScript's ``String()`` and ``JSON.stringify``, bit for bit, for values decoded from JSON.

The original server was JavaScript: it turned a ``distinct_id``, an alias or
a session id into text with ``String(value)`` and a non-text event name with
``JSON.stringify(value)``. Python's ``str`` and ``json.dumps`` disagree with
both on exactly the inputs capture endpoints send by mistake::

    value        String()        str()      JSON.stringify()   json.dumps()
    true         "true"          "True"     "true"             "true"
    3.0          "3"             "3.0"      "3"                "3.0"
    1e21         "1e+21"         "1e+21"    "1e+21"            "1e+21"
    1e-7         "1e-7"          "1e-07"    "1e-7"             "1e-07"
    -0.0         "0"             "-0.0"     "0"                "-0.0"
    NaN          "NaN"           "nan"      "null"             "NaN"
    2**64        "18446744073709552000"  (JavaScript numbers are doubles)
    [1, null]    "1,"            "[1, None]"
    {"a": 1}     "[object Object]"

A JSON integer is a double in JavaScript, so one beyond 2**53 is rounded
the way ``JSON.parse`` rounds it before being written.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_ARRAY_INDEX = re.compile(r"^(?:0|[1-9][0-9]*)$")
_MAX_ARRAY_INDEX = 2**32 - 2


def js_number(value: float | int) -> str:
    """``Number.prototype.toString()`` of ``value`` read as a JavaScript number (a double)."""
    if isinstance(value, int):
        try:
            value = float(value)
        except OverflowError:
            return "Infinity" if value > 0 else "-Infinity"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"  # -0 too
    if value < 0:
        return "-" + js_number(-value)
    # repr gives the shortest digits that read back as the same double: the
    # digits ECMAScript's Number::toString asks for. Only the layout differs.
    sign, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = int(exponent) + k  # the decimal point sits after n digits
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return f"{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"


def js_string(value: Any) -> str:
    """``String(value)`` of a value decoded from JSON (None is JavaScript's null)."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return js_number(value)
    if isinstance(value, (list, tuple)):
        # Array.prototype.join: null and undefined become empty text.
        return ",".join("" if item is None else js_string(item) for item in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def js_json(value: Any) -> str:
    """``JSON.stringify(value)`` (compact) of a value decoded from JSON.

    Recursive: call it only on values whose depth is bounded (events are,
    by ``MAX_EVENT_DEPTH``, before they get here)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        text = js_number(value)
        return "null" if text in ("NaN", "Infinity", "-Infinity") else text
    if isinstance(value, str):
        return _js_quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(js_json(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_js_quote(key)}:{js_json(item)}" for key, item in _js_key_order(value)) + "}"
    return _js_quote(str(value))


def _js_quote(text: str) -> str:
    # json.dumps escapes what JSON.stringify escapes (quote, backslash, control
    # characters as \u00XX in lower case); a lone surrogate JSON.stringify
    # writes as an escape too (well-formed JSON.stringify).
    quoted = json.dumps(text, ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", quoted)


def _js_key_order(value: dict[Any, Any]) -> list[tuple[str, Any]]:
    # A JavaScript object lists integer-like keys first, ascending, then the
    # others in insertion order.
    items = [(str(key), item) for key, item in value.items()]
    indices = [(key, item) for key, item in items if _ARRAY_INDEX.match(key) and int(key) <= _MAX_ARRAY_INDEX]
    if not indices:
        return items
    index_keys = {key for key, _ in indices}
    return sorted(indices, key=lambda pair: int(pair[0])) + [(key, item) for key, item in items if key not in index_keys]
