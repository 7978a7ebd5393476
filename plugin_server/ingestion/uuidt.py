"""UUIDT: time-ordered uuids, the same algorithm as PostHog's.

Sixteen bytes: six bytes of Unix time in milliseconds, two bytes of a
per-millisecond series counter and eight random bytes, all big-endian, with
no version or variant bits. Ids drawn in one process sort by creation time,
which keeps the indexes they land in append-mostly.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable

from plugin_server.ingestion.jsstring import js_string

# Random bytes are read from the OS this many ids at a time: one os.urandom
# call per id was a system call per event (the person uuid every event carries)
# and a sixth of the ingester's CPU on a VM where system calls are slow.
_RANDOM_BLOCK_IDS = 512
_GENERATORS: weakref.WeakSet[UUIDTGenerator] = weakref.WeakSet()
_UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


class UUIDTGenerator:
    """Draws UUIDTs; thread-safe. ``clock_ms`` is injectable for tests."""

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._last_ms = -1
        self._series = 0
        self._random = b""
        self._random_at = 0
        _GENERATORS.add(self)

    def _forget_random(self) -> None:
        self._random = b""
        self._random_at = 0

    def __call__(self) -> uuid.UUID:
        return uuid.UUID(int=self._next())

    def text(self) -> str:
        """A new UUIDT as its lower-case 8-4-4-4-12 text, without building a UUID object (hot path)."""
        digits = f"{self._next():032x}"
        return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"

    def _next(self) -> int:
        now_ms = self._clock_ms()
        with self._lock:
            if now_ms != self._last_ms:
                self._last_ms = now_ms
                self._series = 0
            else:
                self._series = (self._series + 1) % 65536
            series = self._series
            at = self._random_at
            if at >= len(self._random):
                self._random = os.urandom(8 * _RANDOM_BLOCK_IDS)
                at = 0
            self._random_at = at + 8
            random_part = int.from_bytes(self._random[at : at + 8], "big")
        return (now_ms & 0xFFFF_FFFF_FFFF) << 80 | series << 64 | random_part


def _forget_random_after_fork() -> None:
    # A forked child must not hand out the random parts its parent's block still holds.
    for generator in list(_GENERATORS):
        generator._forget_random()


os.register_at_fork(after_in_child=_forget_random_after_fork)

uuidt = UUIDTGenerator()


def is_valid_uuid(value: object) -> bool:
    """True for a string in the 8-4-4-4-12 hex form (any case), as the original checks."""
    return isinstance(value, str) and _UUID_PATTERN.fullmatch(value) is not None


def render_for_error(value: object) -> str:
    """The value as the original's error message shows it: JavaScript's ``String()``
    (``null``, ``true``, ``3`` for 3.0, ``[object Object]``)."""
    return js_string(value)
