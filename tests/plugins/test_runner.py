"""Running plugins through real workers: the chain's rules and the meta object (spec: plugins.md §4, §6)."""

from __future__ import annotations

import json

import pytest
from django.test import override_settings

from plugin_server.models import PluginLogEntry, PluginStorage
from tests.factories import create_attachment, create_team
from tests.workers.conftest import make_pool  # noqa: F401  (fixture)
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.redis]


def test_meta_cache_incr_counts_across_events(make_pool):
    """meta.cache: set in setup, incr per event → 1, 2, 3 (acceptance: meta.cache incr)."""
    config = install(
        "def setup_plugin(meta):\n    meta.cache.set('counter', 0)\n"
        "def process_event(event, meta):\n    event['properties']['counter'] = meta.cache.incr('counter')\n    return event\n"
    )
    pool = make_pool(concurrency=1)
    out = pool.process_events([event(config.team_id, n=i) for i in range(3)])
    assert [e["properties"]["counter"] for e in out] == [1, 2, 3]


def test_meta_storage_config_and_attachments(make_pool):
    """meta.storage persists in Postgres; meta.config has defaults applied; attachments arrive as bytes."""
    config = install(
        "def process_event(event, meta):\n"
        "    meta.storage.set('seen', {'n': event['properties']['n']})\n"
        "    event['properties']['config'] = meta.config\n"
        "    event['properties']['file'] = meta.attachments['maxmindMmdb']['contents'].decode()\n"
        "    event['properties']['stored'] = meta.storage.get('seen')\n"
        "    return event\n",
        plugin_fields={"config_schema": [{"key": "greeting", "type": "string", "default": "hello"}]},
        config={"localhostIP": "94.224.212.175"},
    )
    create_attachment(config, "maxmindMmdb", b"test", file_name="test.txt")
    pool = make_pool()
    out = pool.process_events([event(config.team_id, n=7)])[0]["properties"]
    assert out["config"] == {"localhostIP": "94.224.212.175", "greeting": "hello"}
    assert out["file"] == "test"
    assert out["stored"] == {"n": 7}
    assert json.loads(PluginStorage.objects.get(plugin_config_id=config.id, key="seen").value) == {"n": 7}


def test_meta_global_is_private_to_each_config(make_pool):
    """meta.global_ filled by setup_plugin is seen by process_event of that config only."""
    team = create_team()
    install("def setup_plugin(meta):\n    meta.global_['key'] = 'value'\n"
            "def process_event(event, meta):\n    event['properties']['a'] = meta.global_.get('key')\n    return event\n", team, order=1)
    install("def process_event(event, meta):\n    event['properties']['b'] = meta.global_.get('key')\n    return event\n", team, order=2)
    pool = make_pool()
    properties = pool.process_events([event(team.id)])[0]["properties"]
    assert (properties["a"], properties["b"]) == ("value", None)


def test_posthog_capture_sends_the_event_back_into_ingestion(make_pool, unique_name, redis_client):
    """posthog.capture from a scheduled task puts one Celery task on PLUGINS_CELERY_QUEUE."""
    config = install("def run_every_minute(meta):\n    posthog.capture('my-new-event', {'random': 'properties'})\n")
    with override_settings(PLUGINS_CELERY_QUEUE=unique_name):
        pool = make_pool()
        pool.run_scheduled(config.id, "runEveryMinute")
        assert redis_client.llen(unique_name) == 1
    redis_client.delete(unique_name)


def test_meta_calls_failing_reach_the_plugin_as_errors(make_pool):
    """A refused meta call raises inside the plugin, which may catch it."""
    config = install(
        "def process_event(event, meta):\n"
        "    try:\n        meta.storage.set('k', object())\n    except Exception as error:\n        event['properties']['error'] = str(error)\n"
        "    return event\n"
    )
    pool = make_pool()
    assert pool.process_events([event(config.team_id)])[0]["properties"]["error"]


def test_process_event_derived_from_process_event_batch(make_pool):
    """A plugin that exports only process_event_batch still runs per event (spec §3.2)."""
    config = install("def process_event_batch(events, meta):\n    return [dict(e, event='batched') for e in events]\n")
    pool = make_pool()
    out = pool.process_events([event(config.team_id), event(config.team_id)])
    assert [e["event"] for e in out] == ["batched", "batched"]


def test_process_event_batch_task(make_pool):
    """process_event_batch replaces a team's batch by the plugin's result and sets the markers (spec §4.2)."""
    config = install("def processEventBatch(events, meta):\n    return [e for e in events if e['properties']['n'] % 2 == 0]\n")
    pool = make_pool()
    out = pool.process_event_batch([event(config.team_id, n=i) for i in range(4)])
    assert [e["properties"]["n"] for e in out] == [0, 2]
    assert out[0]["properties"]["$plugins_succeeded"] == [f"{config.plugin.name} ({config.id})"]


def test_returning_a_non_event_is_an_error(make_pool):
    """A truthy result that is not a dict is recorded and the event goes on as it was."""
    config = install("def process_event(event, meta):\n    return 'oops'\n")
    pool = make_pool()
    out = pool.process_events([event(config.team_id)])
    assert out[0]["properties"]["$plugins_failed"] == [f"{config.plugin.name} ({config.id})"]
    config.refresh_from_db()
    assert "not str" in config.error["message"]


def test_logger_levels(make_pool):
    """meta.logger.<level> writes CONSOLE entries with the level's type."""
    config = install("def process_event(event, meta):\n    meta.logger.warn('careful', [99, 79])\n    meta.logger.debug()\n    return event\n")
    pool = make_pool()
    pool.process_events([event(config.team_id)])
    entries = set(PluginLogEntry.objects.filter(plugin_config_id=config.id, source="CONSOLE").values_list("type", "message"))
    assert entries == {("WARN", "careful [99,79]"), ("DEBUG", "")}
