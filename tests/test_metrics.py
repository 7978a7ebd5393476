"""StatsD names on a real UDP socket; the progress line; slow-operation warnings; staleness."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from django.test import override_settings

from plugin_server import metrics as metric_names
from plugin_server.activity import Activity
from plugin_server.metrics import RecordingMetrics, get_metrics, set_metrics
from plugin_server.models import Team
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.progress import ProgressReporter
from plugin_server.slow import SlowOperationWatch, running_operations, slow_operation
from plugin_server.staleness import STALE_MESSAGE, StalenessWatch
from plugin_server.workers.pool import PoolSettings, WorkerPool
from tests.workers.helpers import event, install

PLUGIN = """
def process_event(event, meta):
    meta.cache.set('seen', event['properties']['n'])
    if event['properties']['n'] == 1:
        raise ValueError('one')
    return event

def run_every_minute(meta):
    pass
"""


@pytest.fixture
def statsd() -> Iterator[socket.socket]:
    """A real UDP socket the server's StatsD client sends to."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(0.2)
    with override_settings(STATSD_HOST="127.0.0.1", STATSD_PORT=receiver.getsockname()[1], STATSD_PREFIX="plugin-server."):
        assert type(get_metrics()).__name__ == "StatsdMetrics"
        yield receiver
    set_metrics(None)
    receiver.close()


def received(receiver: socket.socket, seconds: float = 1.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = receiver.recv(65536)
        except TimeoutError:
            continue
        lines.extend(data.decode().splitlines())
    return lines


@pytest.mark.django_db(transaction=True)
@pytest.mark.redis
@pytest.mark.slow
def test_the_originals_names_arrive_on_a_udp_socket(statsd: socket.socket) -> None:
    from plugin_server.plugins.meta.host import MetaHost
    from plugin_server.query_metrics import install_postgres_metrics

    config = install(PLUGIN)
    install_postgres_metrics()
    Team.objects.filter(id=config.team_id).count()
    pool = WorkerPool(PoolSettings.from_config(concurrency=1, task_timeout=5.0))
    pool.start()
    try:
        pool.process_events([event(config.team_id, n=n) for n in range(3)])
        pool.run_scheduled(config.id, "runEveryMinute")
        ctx = PluginContext(config.id, config.plugin_id, config.team_id, config.plugin.name)
        MetaHost().call(ctx, "cache", "get", ["seen"], {})
        activity = Activity()
        activity.record("ingestEvent", 3)
        reporter = ProgressReporter(queue_depth=lambda: 7, slots=pool.slots, activity=activity)
        reporter._last_events = 0
        assert reporter.report() is not None
        StalenessWatch(0, on_stale=lambda: None, activity=activity).check()
    finally:
        pool.stop()
    lines = received(statsd)
    names = {line.split(":", 1)[0] for line in lines}
    name = config.plugin.name
    expected = {
        "plugin-server.query.postgres,queryTag=select.posthog_team",
        "plugin-server.query.postgres.total,queryTag=select.posthog_team",
        f"plugin-server.plugin.process_event,plugin={name},teamId={config.team_id}",
        f"plugin-server.plugin.{name}.process_event.ERROR",
        f"plugin-server.plugin.task.schedule.run_every_minute.{config.id}",
        "plugin-server.piscina_task.process",
        "plugin-server.query.redisSet",
        "plugin-server.query.redisSet.total",
        "plugin-server.query.regisGet",
        "plugin-server.piscina.threads",
        "plugin-server.piscina.queue_size",
        "plugin-server.piscina.utilization",
        "plugin-server.ingestion.events_per_second",
        "plugin-server.ingestion.queue_depth",
        "plugin-server.alerts.stale_plugin_server_restarted",
    }
    assert expected <= names, expected - names
    assert f"plugin-server.plugin.{name}.process_event.ERROR:1|c" in lines
    assert "plugin-server.ingestion.queue_depth:7|g" in lines
    assert "plugin-server.piscina.threads:1|g" in lines


def test_every_name_is_defined_in_the_metrics_module() -> None:
    """The original's table (spec §14.2), kafka_queue.* included, is in plugin_server/metrics.py."""
    defined = {value for value in vars(metric_names).values() if isinstance(value, str)}
    defined |= set(metric_names.QUERY_REDIS.values())
    originals = {
        "query.postgres", "query.postgres_transation", "query.clickhouse", "query.regisGet", "query.redisSet",
        "query.redisIncr", "query.redisExpire", "query.redisLPush", "query.redisBRPop", "query.kafka_send",
        "kafka_queue.single_event", "kafka_queue.single_ingestion", "kafka_queue.single_on_event",
        "kafka_queue.single_on_snapshot", "kafka_queue.each_event", "kafka_queue.each_batch",
        "kafka_queue.single_save.standard", "kafka_queue.single_save.snapshot", "hooks.send_task",
        "piscina_task.{kind}", "piscina.{stat}", "plugin.process_event", "plugin.process_event_batch",
        "plugin.{plugin}.{method}", "plugin.{plugin}.{method}.ERROR", "plugin.task.{kind}.{task}.{config_id}",
        "plugin.task.{kind}.{task}.{config_id}.ERROR", "logs.entries_created", "mmdb.internal_request",
        "event_loop_lag", "alerts.stale_plugin_server_restarted",
    }
    assert originals <= defined, originals - defined


def test_the_progress_line_says_processed_rate_and_depth(caplog: pytest.LogCaptureFixture) -> None:
    activity = Activity()
    recording = RecordingMetrics()
    set_metrics(recording)
    try:
        reporter = ProgressReporter(queue_depth=lambda: 42, activity=activity, interval=0.3, lag_interval=0.1)
        with caplog.at_level(logging.INFO, logger="plugin_server.progress"):
            reporter.start()
            try:
                activity.record("ingestEvent", 120)
                deadline = time.monotonic() + 10
                while not any("events processed" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.7)  # more periods pass without events: no more lines
            finally:
                reporter.stop()
    finally:
        set_metrics(None)
    lines = [r.getMessage() for r in caplog.records if "events processed" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("📊 120 events processed in the last ") and lines[0].endswith("; 42 waiting in the queue")
    assert any(metric == metric_names.EVENT_LOOP_LAG for kind, metric, _v, _t in recording.calls if kind == "timing")
    assert ("gauge", metric_names.INGESTION_QUEUE_DEPTH, 42, {}) in recording.calls


def test_a_slow_operation_is_warned_about_once_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    recording = RecordingMetrics()
    set_metrics(recording)
    watch = SlowOperationWatch(threshold=0.2, interval=0.05)
    try:
        with caplog.at_level(logging.WARNING, logger="plugin_server.slow"):
            watch.start()
            with slow_operation("consumer.store"):
                assert [name for name, _ in running_operations()] == ["consumer.store"]
                time.sleep(0.6)
                finished = True
            with slow_operation("consumer.take"):
                pass  # quick: no warning
            time.sleep(0.2)
    finally:
        watch.stop()
        set_metrics(None)
    warnings = [r.getMessage() for r in caplog.records]
    assert finished and warnings == ["⌛ consumer.store still running after 0.2 s"]
    assert recording.total(metric_names.SLOW_OPERATION) == 1
    assert running_operations() == []


def test_staleness_alerts_once_per_activity_and_asks_for_a_restart(caplog: pytest.LogCaptureFixture) -> None:
    activity = Activity()
    stops: list[int] = []
    watch = StalenessWatch(0.2, on_stale=lambda: stops.append(1), instance_id="abc", activity=activity,
                           pool_stats=lambda: {"threads": 2})
    assert not watch.check()
    time.sleep(0.3)
    with caplog.at_level(logging.ERROR, logger="plugin_server.staleness"):
        assert watch.check()
        assert not watch.check()  # the same last activity: alerted already
    record = caplog.records[0]
    assert record.getMessage() == STALE_MESSAGE.format(seconds="0.2")
    assert record.getMessage() == "Plugin Server has not ingested events for over 0.2 seconds! Rebooting."
    assert (record.instanceId, record.lastActivityType, record.piscina) == ("abc", "serverStart", '{"threads": 2}')  # type: ignore[attr-defined]
    assert stops == [1]
    activity.record("ingestEvent", 1)
    assert not watch.check()
    time.sleep(0.3)
    assert watch.check() and stops == [1, 1]
