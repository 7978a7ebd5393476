"""acceptance.md "End to end" (Postgres) and "Errors don't take down ingestion".

The whole ingestion chain in this process, on the real services: config
39's ``posthog.capture`` (the MetaHost) puts a Celery task on this test's
queue; the Consumer takes it with the real CelerySource, runs the team's
plugin in a real worker process, stores the event in Postgres with the
Ingester, acknowledges it and runs ``on_event`` / ``on_snapshot``. The
plugin writes its "test log" with ``meta.cache.lpush`` (Redis), which the
test reads back through the same host.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.test import override_settings

from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.sources.celery import CelerySource
from plugin_server.models import Event, PluginConfig, PluginLogEntry, SessionRecordingEvent
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.host import MetaHost
from plugin_server.workers.pool import PoolSettings, WorkerPool
from tests.factories import create_plugin, create_plugin_config, create_team

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

FAST = {"poll_timeout": 0.0, "retry_backoff": 0.0, "retry_backoff_max": 0.0, "batch_size": 10}

E2E_PLUGIN = """
import json

def process_event(event, meta):
    meta.cache.lpush('testlog', json.dumps(['processEvent']))
    meta.logger.info('amogus')
    event['properties']['processed'] = 'hell yes'
    event['properties']['upperUuid'] = event['properties']['uuid'].upper()
    event['properties']['$snapshot_data'] = 'no way'
    return event

def on_event(event, meta):
    meta.cache.lpush('testlog', json.dumps(['onEvent', event['event']]))

def on_snapshot(event, meta):
    meta.cache.lpush('testlog', json.dumps(['onSnapshot', event['event']]))
"""

CRASHING_PLUGIN = """
def process_event(event, meta):
    crash = event['properties'].get('crash')
    if crash == 'throw':
        raise RuntimeError('error thrown in plugin')
    if crash == 'throw in callback':
        # Python has no unawaited promise: the nearest thing is an error
        # raised later, in code the plugin handed to someone else.
        return sorted([event, event], key=lambda _: exec_later())
    return event

def exec_later():
    raise RuntimeError('error thrown in plugin')
"""


class Pipeline:
    """Config 39's capture, and the consumer loop that ingests what it captured."""

    def __init__(self, config: PluginConfig, queue: str, host: MetaHost, consumer: Consumer) -> None:
        self.config = config
        self.queue = queue
        self.host = host
        self.consumer = consumer
        self.ctx = PluginContext(
            plugin_config_id=config.id, plugin_id=config.plugin_id, team_id=config.team_id, plugin_name=config.plugin.name
        )

    def capture(self, event: str, properties: dict[str, Any]) -> None:
        """posthog.capture of config 39: a Celery task on the plugins queue."""
        self.host.call(self.ctx, "posthog", "capture", [event, properties], {})

    def drain(self, limit: int = 20) -> None:
        """Bounded run-once calls until the queue gives nothing, then the plugin logs are written."""
        for _ in range(limit):
            if self.consumer.run_once() == 0:
                self.host.flush()
                return
        raise AssertionError("the queue did not drain")

    def test_log(self) -> list[list[str]]:
        """The plugin's test log, oldest first."""
        entries = self.host.call(self.ctx, "cache", "lrange", ["testlog", 0, -1], {})
        return [json.loads(entry) for entry in reversed(entries)]


def plugin_with_pool(source: str, redis_client: redis.Redis) -> tuple[PluginConfig, MetaHost, WorkerPool]:
    """A team with the plugin ``source`` installed, a meta host and a started pool of one worker."""
    team = create_team(ingested_event=True)
    config = create_plugin_config(team=team, plugin=create_plugin(organization=team.organization, source=source))
    # Ids restart with each test database, Redis keys do not: start clean.
    stale = list(redis_client.scan_iter(match=f"@plugin/{config.plugin_id}/*", count=1000))
    if stale:
        redis_client.delete(*stale)
    host = MetaHost()
    pool = WorkerPool(PoolSettings.from_config(concurrency=1, task_timeout=10.0, memory_limit_mb=512), host=host)
    pool.start()
    return config, host, pool


@pytest.fixture
def pipeline(unique_name: str, redis_client: redis.Redis) -> Iterator[Callable[[str], Pipeline]]:
    """Builds the chain around a plugin source; stops everything at the end."""
    stops: list[Callable[[], None]] = []
    settings = override_settings(PLUGINS_CELERY_QUEUE=unique_name)
    settings.enable()

    def build(source: str) -> Pipeline:
        config, host, pool = plugin_with_pool(source, redis_client)
        celery = CelerySource(queue=unique_name)
        celery.start()
        stops.extend([host.close, pool.stop, celery.close])
        consumer = Consumer(celery, Ingester(), pool, options=ConsumerOptions.from_settings(**FAST))
        return Pipeline(config, unique_name, host, consumer)

    yield build
    for stop in reversed(stops):
        stop()
    settings.disable()
    redis_client.delete(unique_name)


def test_event_captured_processed_ingested(pipeline: Callable[[str], Pipeline]) -> None:
    """A captured `custom event` is processed by the plugin, stored once, and then seen by on_event."""
    chain = pipeline(E2E_PLUGIN)
    event_uuid = str(uuid.uuid4())
    chain.capture("custom event", {"name": "haha", "uuid": event_uuid})
    chain.drain()
    [event] = Event.objects.filter(team_id=chain.config.team_id)
    assert event.event == "custom event"
    assert event.properties["processed"] == "hell yes"
    assert event.properties["upperUuid"] == event_uuid.upper()
    assert chain.test_log() == [["processEvent"], ["onEvent", "custom event"]]


def test_snapshot_captured_processed_ingested(pipeline: Callable[[str], Pipeline]) -> None:
    """A captured $snapshot skips process_event: its data is stored as sent and only on_snapshot runs."""
    chain = pipeline(E2E_PLUGIN)
    chain.capture("$snapshot", {"$session_id": "1234abc", "$snapshot_data": "yes way"})
    chain.drain()
    [recording] = SessionRecordingEvent.objects.filter(team_id=chain.config.team_id)
    assert (recording.session_id, recording.snapshot_data) == ("1234abc", "yes way")
    assert chain.test_log() == [["onSnapshot", "$snapshot"]]


def test_console_logging_is_persistent(pipeline: Callable[[str], Pipeline]) -> None:
    """The plugin's info line during processing is one INFO entry in the plugin log table."""
    chain = pipeline(E2E_PLUGIN)
    chain.capture("custom event", {"name": "haha", "uuid": str(uuid.uuid4())})
    chain.drain()
    entries = PluginLogEntry.objects.filter(plugin_config_id=chain.config.id, message__contains="amogus")
    assert [(entry.type, entry.message) for entry in entries] == [("INFO", "amogus")]


@pytest.mark.parametrize("crash", ["throw", "throw in callback"], ids=["thrown errors", "errors raised later in a callback"])
def test_errors_do_not_take_down_ingestion(pipeline: Callable[[str], Pipeline], crash: str) -> None:
    """4 events whose plugin raises are all stored, and the error is recorded on the plugin config."""
    chain = pipeline(CRASHING_PLUGIN)
    PluginConfig.objects.filter(id=chain.config.id).update(error=None)
    for _ in range(4):
        chain.capture("crashing event", {"crash": crash})
    chain.drain()
    assert Event.objects.filter(team_id=chain.config.team_id, event="crashing event").count() == 4
    chain.config.refresh_from_db()
    assert chain.config.error["message"] == "error thrown in plugin"
