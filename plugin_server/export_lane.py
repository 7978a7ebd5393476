"""The export lane: ``on_event`` / ``on_snapshot`` after the batch is stored, off the consumer's path.

The consumer hands every stored batch to :meth:`ExportLane.submit` and goes
on to the next batch at once: a slow export (a webhook answering in 100 ms,
or never) costs ingestion nothing. What the lane holds:

- **a backlog per plugin config** of stored events waiting for that
  config's export, in chunks of ``5 × TASKS_PER_WORKER`` events. It is
  bounded per config (``EXPORT_BACKLOG_EVENTS`` events, ``EXPORT_BACKLOG_BYTES``
  bytes) and in all (``EXPORT_LANE_BYTES``). A config whose backlog is full
  has its waiting events **shed**: counted in ``exports.events_shed`` (tag
  ``reason``) and said in that config's plugin log; when the whole lane is
  full, the config with the largest backlog is shed. The consumer never
  waits and memory never grows without bound.
- **export threads** (``EXPORT_CONCURRENCY``, 0 = ``WORKER_CONCURRENCY``),
  supervised services, each taking the next chunk round-robin over the
  configs: one chunk is one task on the team's worker, which runs up to the
  config's cap of calls at once (``EXPORT_CONFIG_CONCURRENCY``, 0 =
  ``TASKS_PER_WORKER``) while they wait on ``meta`` calls. A team has at
  most one export task at a time (its worker would run them one after the
  other anyway), so the threads stay free for other teams.
- **fairness**: every config gets its turn; a config whose calls keep timing
  out (``EXPORT_TIMEOUTS_TO_SLOW`` in a row) is slowed, one call at a time
  with a pause of ``TASK_TIMEOUT`` between chunks, and after
  ``EXPORT_TIMEOUTS_TO_DISABLE`` in a row it is disabled with the reason
  (plugin log, the config's error, the server log).
- **durability** (:mod:`plugin_server.export_journal`, unless
  ``EXPORT_JOURNAL`` is off): each chunk is journaled in Redis before it
  waits, and deleted after its export call. A chunk interrupted by a crash or
  a stop runs again on the next start (or on another server once this one's
  heartbeat is older than ``EXPORT_ORPHAN_SECONDS``): exports are **at least
  once**. A chunk that could not be journaled (Redis away) and is still
  waiting at a stop is counted in ``exports.events_lost`` and said in the
  plugin log.

Stopping: the lane waits up to ``EXPORT_DRAIN_SECONDS`` for its backlog to
empty, then stops its threads; what is left stays journaled for the next
start (``exports.events_left``, and a line in each such config's plugin log).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from plugin_server import json_codec
from plugin_server.events import PluginEvent
from plugin_server.export_journal import ExportJournal
from plugin_server.metrics import (
    EXPORTS_BACKLOG_BYTES,
    EXPORTS_BACKLOG_EVENTS,
    EXPORTS_CONFIG_DISABLED,
    EXPORTS_CONFIG_SLOWED,
    EXPORTS_EVENTS_EXPORTED,
    EXPORTS_EVENTS_FAILED,
    EXPORTS_EVENTS_LEFT,
    EXPORTS_EVENTS_LOST,
    EXPORTS_EVENTS_QUEUED,
    EXPORTS_EVENTS_RECOVERED,
    EXPORTS_EVENTS_SHED,
    EXPORTS_JOURNAL_FAILED,
    KAFKA_QUEUE_SINGLE_ON_EVENT,
    get_metrics,
)
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.service import Service

logger = logging.getLogger(__name__)

SHED_BACKLOG_FULL = "backlog_full"
SHED_LANE_FULL = "lane_full"
SHED_DISABLED = "disabled"

SHED_MESSAGE = (
    "{count} events waiting for {method} were not exported: {why}. "
    "They are stored; only this plugin's export of them was skipped."
)
SLOWED_MESSAGE = "Exports slowed: {count} calls in a row timed out; one call at a time, {pause:g} s apart, until one succeeds."
DISABLED_MESSAGE = "Plugin was disabled: {count} export calls in a row timed out (limit {limit})."
LEFT_MESSAGE = "{count} events were still waiting for export when the server stopped; they will be exported after the restart."
LOST_MESSAGE = "{count} events were still waiting for export when the server stopped and could not be kept (Redis unreachable): not exported."


class ExportRunner(Protocol):
    """What the lane needs of the worker pool."""

    def exporters(self, team_id: Any, snapshot: bool) -> tuple[int, ...]: ...

    def export(self, config_id: int, events: list[PluginEvent], concurrency: int) -> dict[str, int]: ...

    def context(self, config_id: int) -> PluginContext | None: ...

    def disable_config(self, config_id: int, reason: str) -> None: ...


# Writes one SYSTEM line into a plugin config's log: (ctx, level, message).
PluginLog = Callable[[PluginContext, str, str], None]


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """The lane's knobs, resolved from the settings of the same names."""

    backlog_events: int = 10_000
    backlog_bytes: int = 16 << 20
    lane_bytes: int = 256 << 20
    concurrency: int = 1
    config_concurrency: int = 10
    chunk_events: int = 50
    timeouts_to_slow: int = 3
    timeouts_to_disable: int = 20
    slow_seconds: float = 30.0
    journal: bool = True
    orphan_seconds: float = 30.0
    drain_seconds: float = 5.0

    @classmethod
    def from_settings(cls, **overrides: Any) -> ExportOptions:
        from plugin_server.config import get_config

        config = get_config()
        values: dict[str, Any] = {
            "backlog_events": config.export_backlog_events,
            "backlog_bytes": config.export_backlog_bytes,
            "lane_bytes": config.export_lane_bytes,
            "concurrency": config.export_concurrency or config.worker_concurrency,
            "config_concurrency": config.export_config_concurrency or config.tasks_per_worker,
            "chunk_events": 5 * config.tasks_per_worker,
            "timeouts_to_slow": config.export_timeouts_to_slow,
            "timeouts_to_disable": config.export_timeouts_to_disable,
            "slow_seconds": config.task_timeout,
            "journal": config.export_journal,
            "orphan_seconds": config.export_orphan_seconds,
            "drain_seconds": config.export_drain_seconds,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(slots=True)
class _Chunk:
    config_id: int
    events: list[PluginEvent]
    size: int
    entry_id: str | None = None


@dataclass(slots=True)
class _Backlog:
    """One config's waiting chunks and its standing."""

    team_id: Any
    chunks: collections.deque[_Chunk] = field(default_factory=collections.deque)
    events: int = 0
    size: int = 0
    running: int = 0
    timeouts: int = 0  # calls timed out in a row
    resume_at: float = 0.0
    slowed: bool = False
    disabled: bool = False
    method: str = "on_event"


@dataclass(slots=True)
class _Shed:
    """Events taken out of a backlog, to count and log outside the lock."""

    config_id: int
    reason: str
    why: str
    method: str
    chunks: list[_Chunk]


class ExportLane(Service):
    """Stored events waiting for their exports (see the module docstring); a supervised service."""

    name = "export lane"

    def __init__(
        self,
        runner: ExportRunner,
        options: ExportOptions | None = None,
        *,
        journal: ExportJournal | None = None,
        plugin_log: PluginLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.runner = runner
        self.options = options or ExportOptions.from_settings()
        if journal is None and self.options.journal:
            from plugin_server.redis_client import get_redis

            journal = ExportJournal(get_redis(), orphan_seconds=self.options.orphan_seconds)
        self.journal = journal if self.options.journal else None
        self.plugin_log = plugin_log
        self._clock = clock
        self._cond = threading.Condition()
        self._backlogs: dict[int, _Backlog] = {}
        self._order: collections.deque[int] = collections.deque()
        self._busy_teams: set[Any] = set()
        self._size = 0
        self._closing = False
        self._workers = [ExportWorker(self, index) for index in range(max(1, self.options.concurrency))]

    # --- the consumer's side ---------------------------------------------------------

    def submit(self, events: Sequence[PluginEvent]) -> None:
        """Queue stored events for their configs' exports; never blocks on a slow export."""
        chunks = self._chunks(events)
        if not chunks:
            return
        self._journal(chunks)
        get_metrics().incr(EXPORTS_EVENTS_QUEUED, sum(len(chunk.events) for chunk in chunks))
        self._enqueue(chunks)

    def _chunks(self, events: Iterable[PluginEvent]) -> list[_Chunk]:
        by_config: dict[int, list[PluginEvent]] = {}
        cache: dict[tuple[Any, bool], tuple[int, ...]] = {}
        for event in events:
            key = (event.get("team_id"), event.get("event") == "$snapshot")
            configs = cache.get(key)
            if configs is None:
                configs = cache[key] = self.runner.exporters(*key)
            for config_id in configs:
                by_config.setdefault(config_id, []).append(event)
        step = max(1, self.options.chunk_events)
        chunks = []
        for config_id, config_events in by_config.items():
            for start in range(0, len(config_events), step):
                part = config_events[start : start + step]
                chunks.append(_Chunk(config_id, part, len(_encode(part))))
        return chunks

    def _journal(self, chunks: list[_Chunk]) -> None:
        if self.journal is None:
            return
        try:
            ids = self.journal.append([(chunk.config_id, _encode(chunk.events)) for chunk in chunks])
        except redis.RedisError as error:
            # Exports still run; only a crash before they do would lose them (counted then).
            get_metrics().incr(EXPORTS_JOURNAL_FAILED, len(chunks))
            logger.warning("could not journal %d export chunks: %s", len(chunks), error)
            return
        for chunk, entry_id in zip(chunks, ids):
            chunk.entry_id = entry_id

    def _enqueue(self, chunks: list[_Chunk]) -> None:
        shed: list[_Shed] = []
        options = self.options
        with self._cond:
            for chunk in chunks:
                backlog = self._backlogs.get(chunk.config_id)
                if backlog is None:
                    team_id = chunk.events[0].get("team_id")
                    backlog = self._backlogs[chunk.config_id] = _Backlog(team_id)
                if chunk.events[0].get("event") == "$snapshot":
                    backlog.method = "on_snapshot"
                if backlog.disabled:
                    shed.append(_Shed(chunk.config_id, SHED_DISABLED, "the plugin was disabled", backlog.method, [chunk]))
                    continue
                n = len(chunk.events)
                if backlog.events + n > options.backlog_events or backlog.size + chunk.size > options.backlog_bytes:
                    why = (
                        f"its export backlog was full ({backlog.events} events, {backlog.size} bytes; "
                        f"limits {options.backlog_events} events, {options.backlog_bytes} bytes)"
                    )
                    shed.append(self._shed(chunk.config_id, SHED_BACKLOG_FULL, why))
                while self._size + chunk.size > options.lane_bytes and self._size:
                    largest = max(self._backlogs, key=lambda config_id: self._backlogs[config_id].size)
                    why = f"the export lane was full ({self._size} bytes, limit {options.lane_bytes}) and this plugin's backlog was the largest"
                    shed.append(self._shed(largest, SHED_LANE_FULL, why))
                if n > options.backlog_events or chunk.size > min(options.backlog_bytes, options.lane_bytes):
                    shed.append(_Shed(chunk.config_id, SHED_BACKLOG_FULL, "one batch was larger than the backlog", backlog.method, [chunk]))
                    continue
                backlog.chunks.append(chunk)
                backlog.events += n
                backlog.size += chunk.size
                self._size += chunk.size
                if chunk.config_id not in self._order:
                    self._order.append(chunk.config_id)
            self._cond.notify_all()
        self._report_shed(shed)

    def _shed(self, config_id: int, reason: str, why: str) -> _Shed:
        """Take every waiting chunk of a config out of the lane (lock held)."""
        backlog = self._backlogs[config_id]
        chunks = list(backlog.chunks)
        backlog.chunks.clear()
        self._size -= backlog.size
        backlog.events = backlog.size = 0
        return _Shed(config_id, reason, why, backlog.method, chunks)

    def _report_shed(self, shed: list[_Shed]) -> None:
        metrics = get_metrics()
        for item in shed:
            count = sum(len(chunk.events) for chunk in item.chunks)
            if not count:
                continue
            metrics.incr(EXPORTS_EVENTS_SHED, count, {"reason": item.reason})
            logger.warning("shed %d events waiting for the exports of plugin config %s: %s", count, item.config_id, item.why)
            self._log(item.config_id, "WARN", SHED_MESSAGE.format(count=count, method=item.method, why=item.why))
            self._forget(item.chunks)

    def _forget(self, chunks: Iterable[_Chunk]) -> None:
        ids = [chunk.entry_id for chunk in chunks if chunk.entry_id is not None]
        if ids and self.journal is not None:
            try:
                self.journal.remove(ids)
            except redis.RedisError as error:
                # Left in the journal: re-run after a restart (at least once).
                logger.warning("could not remove %d exported chunks from the journal: %s", len(ids), error)

    def _log(self, config_id: int, level: str, message: str) -> None:
        ctx = self.runner.context(config_id)
        if ctx is None or self.plugin_log is None:
            return
        try:
            self.plugin_log(ctx, level, message)
        except Exception:  # noqa: BLE001 — a log line must not stop the lane
            logger.exception("could not write to the plugin log of config %s", config_id)

    # --- the export threads' side ------------------------------------------------------

    def take(self, timeout: float) -> _Chunk | None:
        """The next chunk to export, round-robin over the configs; None after ``timeout`` s or once closing."""
        deadline = self._clock() + timeout
        with self._cond:
            while not self._closing:
                chunk, wake = self._next()
                if chunk is not None:
                    return chunk
                left = deadline - self._clock()
                if left <= 0:
                    return None
                self._cond.wait(min(left, wake) if wake is not None else left)
        return None

    def _next(self) -> tuple[_Chunk | None, float | None]:
        """A chunk whose config and team are free (lock held); else how long until a slowed one may run."""
        now = self._clock()
        wake: float | None = None
        for _ in range(len(self._order)):
            config_id = self._order[0]
            self._order.rotate(-1)
            backlog = self._backlogs[config_id]
            if not backlog.chunks:
                self._order.remove(config_id)
                continue
            if backlog.team_id in self._busy_teams or backlog.running:
                continue
            if backlog.resume_at > now:
                wake = min(wake, backlog.resume_at - now) if wake is not None else backlog.resume_at - now
                continue
            chunk = backlog.chunks.popleft()
            backlog.events -= len(chunk.events)
            backlog.size -= chunk.size
            self._size -= chunk.size
            backlog.running += 1
            self._busy_teams.add(backlog.team_id)
            return chunk, None
        return None, wake

    def run_chunk(self, chunk: _Chunk) -> None:
        """Export one chunk, then settle its journal entry and its config's standing."""
        backlog = self._backlogs[chunk.config_id]
        cap = 1 if backlog.slowed else max(1, self.options.config_concurrency)
        stats: dict[str, int] | None = None
        started = time.perf_counter()
        try:
            stats = self.runner.export(chunk.config_id, chunk.events, cap)
            # The original's per-event export timing: the mean over the chunk.
            get_metrics().timing(KAFKA_QUEUE_SINGLE_ON_EVENT, (time.perf_counter() - started) * 1000 / len(chunk.events))
        except Exception as error:  # noqa: BLE001 — a lost worker is the pool's to report; the lane goes on
            if self._closing or self.stopping:
                # The pool is stopping under it: keep the journal entry, it runs after the restart.
                chunk.entry_id = None
                logger.info("export of %d events of config %s interrupted by the stop", len(chunk.events), chunk.config_id)
            else:
                get_metrics().incr(EXPORTS_EVENTS_FAILED, len(chunk.events))
                logger.warning("export of %d events of config %s failed: %s", len(chunk.events), chunk.config_id, error)
        else:
            get_metrics().incr(EXPORTS_EVENTS_EXPORTED, len(chunk.events))
        finally:
            with self._cond:
                backlog.running -= 1
                self._busy_teams.discard(backlog.team_id)
                self._cond.notify_all()
        if chunk.entry_id is not None:
            self._forget([chunk])
        if stats is not None:
            self._standing(chunk.config_id, backlog, stats)

    def _standing(self, config_id: int, backlog: _Backlog, stats: dict[str, int]) -> None:
        """Slow, then disable, a config whose calls keep timing out; restore one that recovered."""
        timeouts, calls = stats.get("timeouts", 0), stats.get("calls", 0)
        options = self.options
        shed: list[_Shed] = []
        disable = slowed_now = False
        with self._cond:
            if timeouts and timeouts >= calls:
                backlog.timeouts += timeouts
            elif timeouts:
                backlog.timeouts = timeouts
            else:
                backlog.timeouts = 0
                backlog.slowed = False
                backlog.resume_at = 0.0
            # Slowed first (one call at a time), disabled only if it goes on timing out then.
            if backlog.slowed and backlog.timeouts >= options.timeouts_to_disable and not backlog.disabled:
                backlog.disabled = disable = True
                shed.append(self._shed(config_id, SHED_DISABLED, "the plugin was disabled"))
            elif backlog.timeouts >= options.timeouts_to_slow:
                slowed_now = not backlog.slowed
                backlog.slowed = True
                backlog.resume_at = self._clock() + options.slow_seconds
        if disable:
            reason = DISABLED_MESSAGE.format(count=backlog.timeouts, limit=options.timeouts_to_disable)
            get_metrics().incr(EXPORTS_CONFIG_DISABLED)
            logger.warning("plugin config %s disabled: %s", config_id, reason)
            try:
                self.runner.disable_config(config_id, reason)
            except Exception:  # noqa: BLE001 — the database away: the config stays out of this lane anyway
                logger.exception("could not disable plugin config %s", config_id)
        elif slowed_now:
            get_metrics().incr(EXPORTS_CONFIG_SLOWED)
            self._log(config_id, "WARN", SLOWED_MESSAGE.format(count=backlog.timeouts, pause=options.slow_seconds))
        self._report_shed(shed)

    # --- service ---------------------------------------------------------------------

    def children(self) -> Sequence[Service]:
        return self._workers

    def prepare(self) -> None:
        self._closing = False
        self._beat()

    def run(self) -> None:
        """Heartbeat, adopt orphaned journals, gauges; every third of EXPORT_ORPHAN_SECONDS."""
        period = max(0.05, self.options.orphan_seconds / 3)
        while not self.sleep(period):
            self._beat()

    def _beat(self) -> None:
        with self._cond:
            events = sum(backlog.events for backlog in self._backlogs.values())
            size = self._size
        metrics = get_metrics()
        metrics.gauge(EXPORTS_BACKLOG_EVENTS, events)
        metrics.gauge(EXPORTS_BACKLOG_BYTES, size)
        if self.journal is None:
            return
        try:
            self.journal.beat()
            self.adopt()
        except redis.RedisError as error:
            logger.warning("export journal heartbeat failed: %s", error)

    def adopt(self) -> int:
        """Take over the journals of lanes that stopped beating; the events re-queued."""
        if self.journal is None:
            return 0
        adopted = 0
        for owner in self.journal.orphans():
            if not self.journal.claim(owner):
                continue
            for _entry_id, entry in self.journal.read(owner):
                if entry is None:
                    continue
                chunks = [_Chunk(entry.plugin_config_id, entry.events, len(_encode(entry.events)))]
                if self.runner.context(entry.plugin_config_id) is None:
                    continue  # the config is gone: nothing to export to
                self._journal(chunks)
                self._enqueue(chunks)
                adopted += len(entry.events)
            self.journal.drop(owner)
            logger.info("adopted the export journal of %s", owner)
        if adopted:
            get_metrics().incr(EXPORTS_EVENTS_RECOVERED, adopted)
        return adopted

    def waiting(self) -> int:
        """Events waiting or being exported now."""
        with self._cond:
            return sum(backlog.events for backlog in self._backlogs.values()) + sum(
                backlog.running for backlog in self._backlogs.values()
            )

    def drain(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for every waiting export to run; True when none is left."""
        deadline = self._clock() + seconds
        with self._cond:
            while any(backlog.chunks or backlog.running for backlog in self._backlogs.values()):
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Drain (EXPORT_DRAIN_SECONDS), stop the threads, then account for what is left."""
        if not self.drain(self.options.drain_seconds):
            logger.warning("exports still waiting after %.1fs at shutdown", self.options.drain_seconds)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        super().stop(timeout)
        self._account_left()

    def _account_left(self) -> None:
        with self._cond:
            left = [(config_id, list(backlog.chunks)) for config_id, backlog in self._backlogs.items() if backlog.chunks]
        metrics = get_metrics()
        for config_id, chunks in left:
            kept = sum(len(chunk.events) for chunk in chunks if chunk.entry_id is not None)
            lost = sum(len(chunk.events) for chunk in chunks if chunk.entry_id is None)
            if kept:
                metrics.incr(EXPORTS_EVENTS_LEFT, kept)
                self._log(config_id, "WARN", LEFT_MESSAGE.format(count=kept))
            if lost:
                metrics.incr(EXPORTS_EVENTS_LOST, lost)
                self._log(config_id, "ERROR", LOST_MESSAGE.format(count=lost))
        if self.journal is not None:
            try:
                self.journal.release()
            except redis.RedisError as error:
                logger.warning("could not release the export journal: %s", error)


class ExportWorker(Service):
    """One export thread: takes chunks from the lane and runs them on the team's worker."""

    def __init__(self, lane: ExportLane, index: int) -> None:
        super().__init__(f"export-{index}")
        self.lane = lane

    def run(self) -> None:
        try:
            while not self.stopping:
                chunk = self.lane.take(0.5)
                if chunk is not None:
                    self.lane.run_chunk(chunk)
        finally:
            from django.db import connection

            connection.close()


def _encode(events: list[PluginEvent]) -> bytes:
    return json_codec.dumps_text(events).encode("utf-8", "surrogatepass")
