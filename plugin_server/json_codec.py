"""JSON on the ingestion hot path: orjson's speed, the standard library's results.

Every event is parsed twice (the Celery envelope and its body) and once more
when a plugin worker sends it back, and every stored batch is encoded once:
with the standard ``json`` module that was about a fifth of the main process's
CPU. orjson does the same work several times faster, but it is not a drop-in
replacement, so each function here gives exactly what ``json`` would have
given, and falls back to ``json`` wherever the two could differ:

- :func:`loads`: orjson reads an integer outside the 64-bit range as a float
  (``json`` keeps it exact), so a document with a run of 19 or more digits is
  read by ``json``. Everything orjson refuses (NaN, ``1e400``, a lone
  surrogate escape, a byte order mark, UTF-16, bytes that are not UTF-8) is
  also handed to ``json`` (or the given fallback), which then accepts or
  raises as it always did.
- :func:`dumps_text`: what ``json.dumps(value, ensure_ascii=False,
  default=str)`` returns as far as Postgres can tell (a jsonb parameter:
  spacing and the spelling of numbers do not matter), for values made of
  what JSON decoding gives. Dates and dataclasses, a non-text key, an
  integer beyond 64 bits and a lone surrogate go to ``json``. Two values
  orjson would write differently are not handled, because they never reach
  it: NaN/Infinity (orjson writes null; ``check_event`` has already replaced
  them, and Postgres refuses json's NaN) and a plain ``Enum`` (orjson writes
  its value).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

# 19 digits in a row may be an integer beyond 64 bits (or part of a text, for
# which the slower path is merely slower). Found by mapping every digit to
# "0" and everything else to "a", then a substring search: two C passes,
# ~2 µs for a 1.4 KB message where the regex \d{19} took ~110 µs.
_DIGITS_ONLY = bytes(ord("0") if chr(byte).isdigit() and byte < 128 else ord("a") for byte in range(256))
_LONG_DIGIT_RUN = b"0" * 19
# Values orjson would encode itself, differently from str(): left to json.
_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def loads(data: bytes | str, fallback: Callable[[Any], Any] = json.loads) -> Any:
    """``fallback(data)`` (``json.loads`` unless given): the same value, or the same exception.

    orjson accepts a subset of what ``json`` does (UTF-8 only, no NaN, no lone
    surrogates, no byte order mark) and reads it alike, outside long integers."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if _LONG_DIGIT_RUN not in raw.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return fallback(data)


def dumps_text(value: Any) -> str:
    """The JSON text of ``value`` for a jsonb parameter (``json.dumps(value, ensure_ascii=False, default=str)``)."""
    try:
        return orjson.dumps(value, option=_PASSTHROUGH, default=_refuse).decode()
    except TypeError:
        # A non-text key, a big integer, a lone surrogate or a value of another
        # kind: json decides (and raises) as it did before.
        return json.dumps(value, ensure_ascii=False, default=str)


def compact_utf8(value: Any) -> bytes | None:
    """orjson's compact UTF-8 encoding of ``value``, or None where only json can encode it.

    None for a lone surrogate, a non-text key, an integer beyond 64 bits, a
    date or dataclass, a cycle. Otherwise: NaN/Infinity come out as ``null``
    and a NUL character as ``\\u0000``, so a caller checking for those must
    look for both texts (a text that merely contains them only costs the slow path)."""
    try:
        return orjson.dumps(value, option=_PASSTHROUGH, default=_refuse)
    except TypeError:
        return None


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is left to json")
