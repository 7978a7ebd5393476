"""Plugin health: counted in the workers, aggregated in the server, written per period, shown in the admin."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from plugin_server.models import PluginHealth
from plugin_server.plugin_health import HEALTH, PERIOD_SECONDS, HealthAggregator, PluginHealthWriter, prune_health, summarize
from plugin_server.plugins import call_timing
from plugin_server.workers.pool import PoolSettings, WorkerPool
from tests.workers.helpers import event, install

PLUGIN = """
import time

def process_event(event, meta):
    n = event['properties']['n']
    time.sleep(0.03)
    if n == 2:
        raise ValueError('two')
    if n % 2:
        return None
    return event

def on_event(event, meta):
    pass
"""


def test_percentiles_from_buckets() -> None:
    counts = call_timing.empty()
    for ms in [3.0] * 90 + [40.0] * 10:
        counts[call_timing.bucket(ms)] += 1
    assert call_timing.percentile(counts, 0.5) is not None and 2 <= call_timing.percentile(counts, 0.5) <= 5  # type: ignore[operator]
    p95 = call_timing.percentile(counts, 0.95)
    assert p95 is not None and 20 <= p95 <= 50
    assert call_timing.percentile(call_timing.empty(), 0.95) is None
    assert call_timing.bucket(0.5) == 0 and call_timing.bucket(70_000) == call_timing.BUCKETS - 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.redis
@pytest.mark.slow
def test_health_of_a_config_is_counted_written_once_per_flush_and_shown_in_the_admin(admin_client: Client) -> None:
    config = install(PLUGIN)
    HEALTH.drain()
    pool = WorkerPool(PoolSettings.from_config(concurrency=2, task_timeout=5.0))
    pool.start()
    try:
        events = [event(config.team_id, f"person-{n}", n) for n in range(10)]
        kept = pool.process_events(events)
        pool.on_events(kept)
    finally:
        pool.stop()
    writer = PluginHealthWriter(interval=3600)
    with CaptureQueriesContext(connection) as queries:
        assert writer.flush() == 2  # (process_event, on_event) in this period: one row each
    inserts = [query["sql"] for query in queries.captured_queries if "plugin_server_pluginhealth" in query["sql"] and "INSERT" in query["sql"]]
    assert len(inserts) == 1
    rows = {row.method: row for row in PluginHealth.objects.filter(plugin_config_id=config.id)}
    assert (rows["process_event"].calls, rows["process_event"].dropped, rows["process_event"].errors) == (10, 5, 1)
    assert rows["on_event"].calls == len(kept) == 5  # 0, 2 (its error lets it go on), 4, 6, 8
    # A second server's counts for the same period add up in the same row.
    second = HealthAggregator()
    second.record(config.id, "process_event", 10, 300.0, 0, 0, rows["process_event"].buckets)
    PluginHealthWriter(second).flush()
    assert PluginHealth.objects.get(plugin_config_id=config.id, method="process_event").calls == 20

    summary = {(s.method, s.window): s for s in summarize(config.id)}
    hour = summary[("process_event", "last hour")]
    assert (hour.calls, hour.dropped, hour.errors) == (20, 5, 1)
    assert hour.mean_ms is not None and hour.mean_ms >= 15
    assert hour.p95_ms is not None and 20 <= hour.p95_ms <= 100
    assert summary[("process_event", "last day")].calls == 20

    page = admin_client.get(reverse("admin:posthog_standin_pluginconfig_change", args=[config.pk])).content.decode()
    assert "p95 per call" in page and "<td>process_event</td><td>last hour</td><td>20</td><td>5</td><td>1</td>" in page


@pytest.mark.django_db
def test_only_the_last_hour_and_day_are_summed_and_old_periods_are_pruned() -> None:
    now = datetime(2026, 1, 2, 12, 0, tzinfo=timezone.utc)
    buckets = call_timing.empty()
    buckets[call_timing.bucket(4.0)] = 1
    for hours_ago, calls in ((0.5, 1), (5, 10), (30, 100), (60, 1000)):
        start = now - timedelta(hours=hours_ago)
        start -= timedelta(seconds=start.timestamp() % PERIOD_SECONDS)
        PluginHealth.objects.create(plugin_config_id=7, method="on_event", period_start=start, calls=calls, errors=0, dropped=0,
                                    total_ms=calls * 4.0, buckets=[count * calls for count in buckets])
    summary = {s.window: s for s in summarize(7, now=now)}
    assert summary["last hour"].calls == 1 and summary["last day"].calls == 11
    assert summary["last day"].mean_ms == pytest.approx(4.0)
    assert prune_health(now=now) == 1  # the 60-hour-old period
    assert PluginHealth.objects.filter(plugin_config_id=7).count() == 3
