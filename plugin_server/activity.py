"""What the server did last, and how many events it processed: read by the progress line and staleness.

One process-wide :data:`ACTIVITY`: the consumer records each batch's plugin
run (``processEvent``), its storage (``ingestEvent``, with the event count)
and its ``on_event`` run (``onEvent``); the server records ``serverStart``.
These are the original's activity types.
Recording is a lock and three assignments, once per batch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ActivitySnapshot:
    last_at: float  # time.time() of the last activity
    last_type: str
    events: int  # events processed since the process started


class Activity:
    """The last activity and the count of processed events (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_at = time.time()
        self._last_type = "serverStart"
        self._events = 0

    def record(self, kind: str, events: int = 0) -> None:
        with self._lock:
            self._last_at = time.time()
            self._last_type = kind
            self._events += events

    def snapshot(self) -> ActivitySnapshot:
        with self._lock:
            return ActivitySnapshot(self._last_at, self._last_type, self._events)


ACTIVITY = Activity()
