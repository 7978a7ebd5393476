"""Limits checked on raw message text before any recursive code parses it.

JSON parsers, ``pickle``, ``copy.deepcopy`` and most code that walks an
event recurse once per nesting level: a message nested 10,000 levels deep
raises ``RecursionError`` (or worse, exhausts the C stack) wherever it goes
next. :func:`json_depth_exceeds` answers "is this JSON text nested deeper
than N?" without recursion and without parsing, so the decoder can refuse
such a message (``too_deep``) before anything else sees it.

Cost: the common case is two ``bytes.count`` calls (C speed): a text with
no more opening brackets than the limit cannot be nested deeper than it.
Only a text with many brackets has its strings blanked out (one regular
expression) and its brackets walked.
"""

from __future__ import annotations

import re
from itertools import accumulate

# A JSON string, escapes included (the "unrolled loop" form: no backtracking).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(text: bytes) -> int:
    """How deeply arrays and objects nest in this JSON text (0 for a scalar); never recursive.

    Brackets inside strings do not count. For text that is not valid JSON
    the figure is an upper bound of what a parser would meet."""
    brackets = _JSON_STRING.sub(b'""', text).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return max(0, *accumulate(_STEP[byte] for byte in brackets))


def json_depth_exceeds(text: bytes, limit: int) -> bool:
    """Whether the JSON ``text`` nests arrays and objects more than ``limit`` levels deep."""
    if text.count(b"[") + text.count(b"{") <= limit:
        return False
    return json_depth(text) > limit
