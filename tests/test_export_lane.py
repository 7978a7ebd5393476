"""The export lane on a real worker pool, Postgres and Redis: bounds and shedding, fairness, the journal."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from plugin_server.export_journal import ExportJournal
from plugin_server.export_lane import ExportLane, ExportOptions
from plugin_server.metrics import EXPORTS_EVENTS_RECOVERED, EXPORTS_EVENTS_SHED, RecordingMetrics
from plugin_server.models import PluginConfig, PluginLogEntry
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.fetch import FetchLimits, PluginFetch
from plugin_server.plugins.meta.host import MetaHost
from plugin_server.workers.pool import PoolSettings, WorkerPool
from tests.manage_process import wait_for
from tests.webhook import RecordingWebhook, webhook  # noqa: F401 — the fixture
from tests.workers.helpers import event, install, team_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

EXPORTER = "def on_event(event, meta):\n    meta.fetch(meta.config['url'] + '/' + str(event['properties']['n']))\n"
LOOPER = "def on_event(event, meta):\n    while True:\n        pass\n"


@pytest.fixture
def make_lane() -> Iterator[Callable[..., tuple[ExportLane, WorkerPool]]]:
    """A started pool (configs installed before) and lane; both stopped at the end."""
    made: list[tuple[ExportLane, WorkerPool]] = []

    def make(journal: ExportJournal | None = None, task_timeout: float = 0.5, **options: Any) -> tuple[ExportLane, WorkerPool]:
        host = MetaHost(fetch=PluginFetch(FetchLimits(timeout=10, max_response_bytes=1_000_000, allow_private_networks=True)))
        settings = PoolSettings.from_config(concurrency=1, tasks_per_worker=5, task_timeout=task_timeout, memory_limit_mb=512, grace=1.0)
        pool = WorkerPool(settings, host=host)
        pool.start()
        values: dict[str, Any] = {"concurrency": 1, "config_concurrency": 5, "chunk_events": 5, "journal": journal is not None,
                                  "drain_seconds": 0.0, "slow_seconds": 0.2}
        values.update(options)

        def plugin_log(ctx: PluginContext, level: str, message: str) -> None:
            host.write_log(ctx, "SYSTEM", level, message)  # type: ignore[arg-type]
            host.flush()

        lane = ExportLane(pool, ExportOptions(**values), journal=journal, plugin_log=plugin_log)
        lane.start()
        made.append((lane, pool))
        return lane, pool

    yield make
    for lane, pool in made:
        lane.stop()
        pool.stop()


def test_a_full_backlog_is_shed_with_a_count_and_a_log_line(
    make_lane: Callable[..., tuple[ExportLane, WorkerPool]], webhook: RecordingWebhook, recording_metrics: RecordingMetrics
) -> None:
    """A config whose backlog is over EXPORT_BACKLOG_EVENTS loses its waiting exports (counted, logged), and
    submit never waits."""
    webhook.delay = 1.0
    config = install(EXPORTER, config={"url": webhook.url})
    lane, _pool = make_lane(backlog_events=10)
    started = time.monotonic()
    for batch in range(4):
        lane.submit([event(team_of(config), n=batch * 5 + n) for n in range(5)])
    assert time.monotonic() - started < 0.5  # the consumer's hand-off does not wait for exports
    shed = recording_metrics.total(EXPORTS_EVENTS_SHED)
    assert shed >= 5
    wait_for(
        lambda: PluginLogEntry.objects.filter(plugin_config_id=config.id, message__contains="were not exported").exists(),
        10,
        "the shed line in the plugin log",
    )
    line = PluginLogEntry.objects.filter(plugin_config_id=config.id, message__contains="were not exported").first()
    assert line is not None and "export backlog was full" in line.message and line.type == "WARN"


def test_a_config_that_keeps_timing_out_is_slowed_then_disabled_and_does_not_starve_others(
    make_lane: Callable[..., tuple[ExportLane, WorkerPool]], webhook: RecordingWebhook
) -> None:
    """A looping exporter (another team) is slowed, then disabled with the reason; the webhook exporter
    gets all its events exported meanwhile."""
    good = install(EXPORTER, config={"url": webhook.url})
    bad = install(LOOPER)
    lane, _pool = make_lane(timeouts_to_slow=2, timeouts_to_disable=4, concurrency=2)
    for batch in range(4):
        lane.submit([event(team_of(bad), n=batch * 5 + n) for n in range(5)] + [event(team_of(good), n=batch * 5 + n) for n in range(5)])
    wait_for(lambda: len(webhook.seen) == 20, 30, "every good export")
    wait_for(lambda: not PluginConfig.objects.get(id=bad.id).enabled, 30, "the looping config disabled")
    bad.refresh_from_db()
    assert bad.error is not None and "export calls in a row timed out" in bad.error["message"]
    messages = list(PluginLogEntry.objects.filter(plugin_config_id=bad.id).values_list("message", flat=True))
    assert any(message.startswith("Exports slowed") for message in messages)
    assert any("export calls in a row timed out" in message for message in messages)
    assert PluginConfig.objects.get(id=good.id).enabled


def test_a_stopped_lanes_journal_is_adopted_and_exported(
    make_lane: Callable[..., tuple[ExportLane, WorkerPool]], webhook: RecordingWebhook, redis_client: redis.Redis, unique_name: str,
    recording_metrics: RecordingMetrics,
) -> None:
    """What a lane could not export before stopping stays journaled in Redis; another lane takes it over."""
    webhook.delay = 0.5
    config = install(EXPORTER, config={"url": webhook.url})
    first_journal = ExportJournal(redis_client, orphan_seconds=0.2, prefix=unique_name)
    lane, pool = make_lane(journal=first_journal, orphan_seconds=0.2, config_concurrency=1)
    lane.submit([event(team_of(config), n=n) for n in range(10)])
    lane.stop()
    pool.stop()
    left = int(redis_client.xlen(first_journal.stream()))  # type: ignore[arg-type]
    assert 0 < left <= 2  # 10 events, chunks of 5: at most one exported in that time
    done = set(webhook.seen)
    second_journal = ExportJournal(redis_client, orphan_seconds=0.2, prefix=unique_name)
    make_lane(journal=second_journal, orphan_seconds=0.2)
    wait_for(lambda: {f"/{n}" for n in range(10)} <= set(webhook.seen), 30, "every event exported")
    assert not redis_client.exists(first_journal.stream())
    assert recording_metrics.total(EXPORTS_EVENTS_RECOVERED) == 10 - len(done)
    wait_for(lambda: redis_client.xlen(second_journal.stream()) == 0, 10, "the journal emptied")


def test_a_slow_export_does_not_hold_up_the_teams_process_event(
    make_lane: Callable[..., tuple[ExportLane, WorkerPool]], webhook: RecordingWebhook
) -> None:
    """A team's exports run in a worker process of their own (same team): its process_event chain runs
    while a 3 s export is in flight."""
    webhook.delay = 3.0
    config = install(EXPORTER + "def process_event(event, meta):\n    event['properties']['seen'] = True\n    return event\n",
                     config={"url": webhook.url})
    lane, pool = make_lane(task_timeout=10.0)
    pool.process_events([event(team_of(config))])  # set up
    lane.submit([event(team_of(config), n=n) for n in range(3)])
    wait_for(lambda: lane.waiting() > 0 and not lane._backlogs[config.id].chunks, 10, "the export in flight")
    started = time.monotonic()
    out = pool.process_events([event(team_of(config), n=7)])
    assert time.monotonic() - started < 2.0
    assert out[0]["properties"]["seen"] is True
    assert not webhook.seen  # the export was still waiting on the webhook
    wait_for(lambda: len(webhook.seen) == 3, 20, "the exports")
    assert len(pool.workers()) == 2  # the team's worker and its export worker
