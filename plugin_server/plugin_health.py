"""Plugin health for operators: per plugin config, calls, dropped events, errors and call times.

Where the numbers come from: each plugin worker sums, per task, every
(config, call) it ran — calls, total time, errors, events dropped and the
calls by duration bucket — and sends that with its result. The main process
adds it to :data:`HEALTH` (a dict update under a lock, once per task and
config: never a write per event). :class:`PluginHealthWriter`, a supervised
service of the server, writes what was gathered every ``interval`` seconds
(60) with one upsert into ``plugin_server_pluginhealth``: one row per
config, call and five-minute period, to which every server adds its counts.
Rows older than ``RETENTION`` (two days) are deleted once an hour.

:func:`summarize` reads a config's last hour and day back for the admin:
events processed (calls), dropped and failed (errors), the mean time per
call and the 95th percentile (from the summed buckets, interpolated within
the bucket it falls in: 1-2-5 steps from 1 ms to 60 s).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from django.db import DatabaseError, close_old_connections, connection, transaction

from plugin_server.metrics import HEALTH_WRITTEN, get_metrics
from plugin_server.models import PluginHealth
from plugin_server.plugins import call_timing
from plugin_server.service import Service

logger = logging.getLogger(__name__)

PERIOD_SECONDS = 300
RETENTION = timedelta(days=2)
PRUNE_EVERY_SECONDS = 3600.0
# Periods kept in memory while the database is away (a period per config and call): bounded.
MAX_PENDING = 50_000

Key = tuple[int, str, int]  # (plugin config id, call, period start epoch seconds)


@dataclass(slots=True)
class Tally:
    calls: int = 0
    errors: int = 0
    dropped: int = 0
    total_ms: float = 0.0
    buckets: list[int] = field(default_factory=call_timing.empty)

    def add(self, calls: int, errors: int, dropped: int, total_ms: float, buckets: Sequence[int]) -> None:
        self.calls += calls
        self.errors += errors
        self.dropped += dropped
        self.total_ms += total_ms
        for index, count in enumerate(buckets):
            self.buckets[index] += count


class HealthAggregator:
    """Sums the workers' reports per config, call and period until the writer drains them."""

    def __init__(self, clock: object = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Key, Tally] = {}

    def record(self, plugin_config_id: int, call: str, calls: int, total_ms: float, errors: int, dropped: int,
               buckets: Sequence[int]) -> None:
        period = int(self._clock() // PERIOD_SECONDS * PERIOD_SECONDS)  # type: ignore[operator]
        key = (plugin_config_id, call, period)
        with self._lock:
            tally = self._pending.get(key)
            if tally is None:
                if len(self._pending) >= MAX_PENDING:
                    return
                tally = self._pending[key] = Tally()
            tally.add(calls, errors, dropped, total_ms, buckets)

    def drain(self) -> dict[Key, Tally]:
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def put_back(self, pending: dict[Key, Tally]) -> None:
        """Keep what could not be written for the next flush (merged with what came meanwhile)."""
        with self._lock:
            for key, tally in pending.items():
                current = self._pending.get(key)
                if current is None:
                    if len(self._pending) < MAX_PENDING:
                        self._pending[key] = tally
                else:
                    current.add(tally.calls, tally.errors, tally.dropped, tally.total_ms, tally.buckets)


HEALTH = HealthAggregator()


def write_health(pending: dict[Key, Tally]) -> int:
    """Add ``pending`` to the period rows: one INSERT ... ON CONFLICT DO UPDATE; returns the rows."""
    if not pending:
        return 0
    table = connection.ops.quote_name(PluginHealth._meta.db_table)
    values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s::bigint[])"] * len(pending))
    params: list[Any] = []
    for (config_id, call, period), tally in sorted(pending.items()):
        params += [config_id, call, datetime.fromtimestamp(period, timezone.utc), tally.calls, tally.errors, tally.dropped,
                   tally.total_ms, tally.buckets]
    sql = (
        f"INSERT INTO {table} AS t (plugin_config_id, method, period_start, calls, errors, dropped, total_ms, buckets) "
        f"VALUES {values} ON CONFLICT (plugin_config_id, method, period_start) DO UPDATE SET "
        "calls = t.calls + EXCLUDED.calls, errors = t.errors + EXCLUDED.errors, dropped = t.dropped + EXCLUDED.dropped, "
        "total_ms = t.total_ms + EXCLUDED.total_ms, "
        "buckets = ARRAY(SELECT a + b FROM unnest(t.buckets, EXCLUDED.buckets) WITH ORDINALITY AS u(a, b, n) ORDER BY n)"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
    get_metrics().incr(HEALTH_WRITTEN, len(pending))
    return len(pending)


def prune_health(now: datetime | None = None) -> int:
    """Delete the periods older than ``RETENTION``."""
    cutoff = (now or datetime.now(timezone.utc)) - RETENTION
    deleted, _ = PluginHealth.objects.filter(period_start__lt=cutoff).delete()
    return deleted


class PluginHealthWriter(Service):
    """Writes :data:`HEALTH` every ``interval`` seconds, and once more when stopped."""

    name = "plugin health"

    def __init__(self, aggregator: HealthAggregator = HEALTH, interval: float = 60.0) -> None:
        super().__init__()
        self.aggregator = aggregator
        self.interval = interval
        self._pruned_at = 0.0

    def flush(self) -> int:
        pending = self.aggregator.drain()
        try:
            written = write_health(pending)
        except DatabaseError:
            logger.exception("plugin health: could not write %d periods; kept for the next flush", len(pending))
            self.aggregator.put_back(pending)
            close_old_connections()
            return 0
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_SECONDS:
            self._pruned_at = time.monotonic()
            prune_health()
        return written

    def run(self) -> None:
        try:
            while not self.sleep(self.interval):
                self.flush()
        finally:
            connection.close()

    def cleanup(self) -> None:
        try:
            self.flush()
        finally:
            connection.close()


@dataclass(frozen=True, slots=True)
class HealthSummary:
    """One config's call over one window."""

    method: str
    window: str  # "last hour" / "last day"
    calls: int
    dropped: int
    errors: int
    mean_ms: float | None
    p95_ms: float | None


WINDOWS = (("last hour", timedelta(hours=1)), ("last day", timedelta(days=1)))


def summarize(plugin_config_id: int, now: datetime | None = None) -> list[HealthSummary]:
    """The config's calls over the last hour and day, per call, from one query."""
    now = now or datetime.now(timezone.utc)
    since = now - WINDOWS[-1][1]
    rows = PluginHealth.objects.filter(plugin_config_id=plugin_config_id, period_start__gte=since - timedelta(seconds=PERIOD_SECONDS))
    by_method: dict[str, list[tuple[datetime, int, int, int, float, list[int]]]] = {}
    for method, start, calls, errors, dropped, total_ms, buckets in rows.values_list(
        "method", "period_start", "calls", "errors", "dropped", "total_ms", "buckets"
    ):
        by_method.setdefault(method, []).append((start, calls, errors, dropped, total_ms, list(buckets)))
    summaries = []
    for method in sorted(by_method):
        for window, span in WINDOWS:
            # A period counts when it ends inside the window.
            periods = [row for row in by_method[method] if row[0] + timedelta(seconds=PERIOD_SECONDS) > now - span]
            summaries.append(_summary(method, window, periods))
    return summaries


def _summary(method: str, window: str, periods: Iterable[tuple[datetime, int, int, int, float, list[int]]]) -> HealthSummary:
    tally = Tally()
    for _start, calls, errors, dropped, total_ms, buckets in periods:
        tally.add(calls, errors, dropped, total_ms, buckets)
    mean = tally.total_ms / tally.calls if tally.calls else None
    return HealthSummary(method, window, tally.calls, tally.dropped, tally.errors, mean, call_timing.percentile(tally.buckets, 0.95))
