"""Several plugin calls at once in one worker process, while they wait on ``meta`` replies.

An export (``on_event``) mostly waits: on ``meta.fetch`` to a webhook, on
``meta.cache``. Run one at a time, a worker does ten 100 ms exports a
second. :class:`ConcurrentCalls` runs up to ``limit`` calls of one task at
once, each on a greenlet of the worker's main thread: a call runs until it
sends a ``meta`` request, then parks; the next call starts (or a parked one
whose reply has come resumes). Replies are matched to their call by the
request id. Only one call ever executes at a time, so:

- **CPU-bound calls gain nothing and lose nothing**: a call that never waits
  never parks, and runs exactly as it would alone.
- **every limit stays per call**: each call has its own time limit; the
  SIGALRM state of a parked call is set aside (``time_limit.park``) and put
  back when it resumes, so the timer always watches the call that runs (a
  deadline passed while parked is raised as soon as it resumes, as a
  timeout while waiting always was). A call is charged its own running and
  its own waits, not the time its reply was ready while another call ran:
  its deadline moves by that much (the reply says when it was ready). The progress marker names the call that
  runs, so a worker lost to memory or a hang is blamed on that call's config.
  The worker holds one team's plugins: concurrency never mixes teams.

Outside :meth:`ConcurrentCalls.run` (process_event chains, scheduled tasks,
jobs), a ``meta`` request waits for its reply in place, as before.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import greenlet

from plugin_server.exceptions import WorkerDied
from plugin_server.plugins import time_limit
from plugin_server.workers import protocol


class ConcurrentCalls:
    """The worker's meta replies, and the greenlets of calls waiting for them."""

    def __init__(self, read_fd: int, marker: protocol.ProgressMarker) -> None:
        self.read_fd = read_fd
        self.marker = marker
        self._hub: greenlet.greenlet | None = None
        self._parked: dict[int, greenlet.greenlet] = {}

    def wait_reply(self, request_id: int) -> dict[str, Any]:
        """The main process's reply to ``request_id``: parks this call when others may run meanwhile."""
        hub = self._hub
        if hub is None or greenlet.getcurrent() is hub:
            while True:
                kind, reply = protocol.receive_from_main(self.read_fd)
                if kind == "meta_reply" and reply["id"] == request_id:
                    return dict(reply)
        self._parked[request_id] = greenlet.getcurrent()
        deadline, config_id, item = self.marker.read()
        limit = time_limit.park()
        ready_for = 0.0
        try:
            reply = hub.switch()
            # The time between the reply being ready and this call getting the worker back went
            # to other calls: it is not charged to this one.
            ready_for = max(0.0, time.monotonic() - float(reply.get("at") or time.monotonic()))
        finally:
            time_limit.unpark(limit, ready_for)
            self.marker.set(deadline + ready_for, config_id, item)
        return dict(reply)

    def run(self, calls: Iterable[Callable[[], None]], limit: int) -> None:
        """Run ``calls``, up to ``limit`` parked at once; returns when all are done.

        A call's own failure is the call's to handle (the runner records
        plugin errors); anything escaping one is raised here once the others
        have finished, so no reply is left for the next task to trip on.
        """
        if limit <= 1 or self._hub is not None:
            for call in calls:
                call()
            return
        hub = self._hub = greenlet.getcurrent()
        waiting = deque(calls)
        failures: list[BaseException] = []

        def guarded(call: Callable[[], None]) -> None:
            try:
                call()
            except BaseException as error:  # noqa: BLE001 — kept until the others are done
                failures.append(error)

        try:
            while waiting or self._parked:
                while waiting and len(self._parked) < limit:
                    greenlet.greenlet(guarded, parent=hub).switch(waiting.popleft())
                if self._parked:
                    self._resume_one()
        finally:
            self._hub = None
            self._parked.clear()
        if failures:
            raise failures[0]

    def _resume_one(self) -> None:
        """Read the next frame from the main process: a reply resumes its call."""
        kind, reply = protocol.receive_from_main(self.read_fd)
        if kind != "meta_reply" or not isinstance(reply, dict):
            raise WorkerDied(f"expected a meta reply, got {kind!r}")
        parked = self._parked.pop(reply.get("id"), None)  # type: ignore[arg-type]
        if parked is not None:
            parked.switch(reply)
