"""Warnings for slow operations: "still running after N s" (log + Sentry), never an abort.

Code wraps a step in
``with slow_operation("consumer.store"):``; registering is a dict insert
under a lock, once per batch or run. :class:`SlowOperationWatch`, a
supervised service of the server, looks at the registry every second and
warns once for each operation running longer than ``TASK_TIMEOUT`` seconds:
a WARNING log line (``⌛ consumer.store still running after 30 s``), a
Sentry message and the ``slow_operation`` count (tag ``operation``). The
operation goes on. Without the watch (tests, ``run_plugin``) nothing warns.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from plugin_server.metrics import SLOW_OPERATION, get_metrics
from plugin_server.sentry import capture_message
from plugin_server.service import Service

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Running:
    name: str
    started: float
    thread: str
    warned: bool = False


_running: dict[int, _Running] = {}
_lock = threading.Lock()
_ids = itertools.count()


@contextmanager
def slow_operation(name: str) -> Iterator[None]:
    """Register the enclosed code as a running operation for the watch."""
    key = next(_ids)
    with _lock:
        _running[key] = _Running(name, time.monotonic(), threading.current_thread().name)
    try:
        yield
    finally:
        with _lock:
            _running.pop(key, None)


def running_operations() -> list[tuple[str, float]]:
    """(name, seconds running) of every registered operation."""
    now = time.monotonic()
    with _lock:
        return [(op.name, now - op.started) for op in _running.values()]


class SlowOperationWatch(Service):
    """Warns once for each operation running longer than ``threshold`` seconds."""

    name = "slow operation watch"

    def __init__(self, threshold: float, interval: float = 1.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.interval = interval

    def check(self) -> list[str]:
        """Warn about the operations that just crossed the threshold; returns their names."""
        now = time.monotonic()
        late: list[_Running] = []
        with _lock:
            for op in _running.values():
                if not op.warned and now - op.started >= self.threshold:
                    op.warned = True
                    late.append(op)
        for op in late:
            message = f"⌛ {op.name} still running after {self.threshold:g} s"
            logger.warning(message, extra={"operation": op.name, "operation_thread": op.thread})
            get_metrics().incr(SLOW_OPERATION, 1, {"operation": op.name})
            capture_message(message, "warning", {"operation": op.name})
        return [op.name for op in late]

    def run(self) -> None:
        while not self.sleep(self.interval):
            self.check()
