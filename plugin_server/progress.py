"""The periodic progress line and gauges of the main process.

Every ``interval`` seconds (10, as the original) while events flow, one log
line::

    📊 1234 events processed in the last 10 s (123.4/s); 56 waiting in the queue

with the gauges ``ingestion.events_per_second`` and
``ingestion.queue_depth``, and the pool gauges the original sent every 10 s
(``piscina.threads``, ``piscina.queue_size``, ``piscina.utilization``). No line
when nothing was processed: an idle server stays quiet. Every ``lag_interval``
seconds (2) it sends ``event_loop_lag``: how late a sleep of this thread woke,
which is what a busy interpreter (the GIL) costs every other thread here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from plugin_server.activity import ACTIVITY, Activity
from plugin_server.metrics import (
    EVENT_LOOP_LAG,
    INGESTION_EVENTS_PER_SECOND,
    INGESTION_QUEUE_DEPTH,
    PISCINA_STAT,
    get_metrics,
)
from plugin_server.service import Service

logger = logging.getLogger(__name__)


class SlotLike(Protocol):
    busy: bool

    def backlog(self) -> int: ...


class ProgressReporter(Service):
    """Logs progress and sends the gauges (see the module docstring)."""

    name = "progress"

    def __init__(
        self,
        queue_depth: Callable[[], int | None] = lambda: None,
        slots: Callable[[], Sequence[SlotLike]] = lambda: (),
        activity: Activity = ACTIVITY,
        interval: float = 10.0,
        lag_interval: float = 2.0,
    ) -> None:
        super().__init__()
        self._queue_depth = queue_depth
        self._slots = slots
        self._activity = activity
        self.interval = interval
        self.lag_interval = lag_interval
        self._last_events = activity.snapshot().events
        self._last_report = time.monotonic()

    def report(self) -> str | None:
        """One progress report: the line logged (None when nothing was processed)."""
        now = time.monotonic()
        events = self._activity.snapshot().events
        processed, self._last_events = events - self._last_events, events
        seconds, self._last_report = max(now - self._last_report, 1e-9), now
        metrics = get_metrics()
        slots = list(self._slots())
        if slots:
            metrics.gauge(PISCINA_STAT.format(stat="threads"), len(slots))
            metrics.gauge(PISCINA_STAT.format(stat="queue_size"), sum(slot.backlog() for slot in slots))
            metrics.gauge(PISCINA_STAT.format(stat="utilization"), sum(slot.busy for slot in slots) / len(slots))
        if processed <= 0:
            return None
        rate = processed / seconds
        depth = self._safe_depth()
        metrics.gauge(INGESTION_EVENTS_PER_SECOND, rate)
        waiting = ""
        if depth is not None:
            metrics.gauge(INGESTION_QUEUE_DEPTH, depth)
            waiting = f"; {depth} waiting in the queue"
        line = f"📊 {processed} events processed in the last {seconds:.0f} s ({rate:.1f}/s){waiting}"
        logger.info(line, extra={"processed": processed, "per_second": round(rate, 1), "queue_depth": depth})
        return line

    def _safe_depth(self) -> int | None:
        try:
            return self._queue_depth()
        except Exception:  # noqa: BLE001 -- the progress line must not fail on a queue that is away
            logger.debug("progress: queue depth unavailable", exc_info=True)
            return None

    def run(self) -> None:
        next_report = time.monotonic() + self.interval
        while True:
            expected = time.monotonic() + self.lag_interval
            if self.sleep(self.lag_interval):
                return
            get_metrics().timing(EVENT_LOOP_LAG, max(0.0, time.monotonic() - expected) * 1000)
            if time.monotonic() >= next_report:
                next_report += self.interval
                self.report()
