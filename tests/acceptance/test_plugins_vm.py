"""acceptance.md "Plugin sandbox" (vm.test.ts) and "Lazy instance", translated to Python plugins
(python-plugins.md): plugin 60 / config 39 of team 2, run in real worker processes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import override_settings

from plugin_server.exceptions import PluginError
from plugin_server.models import PluginConfig, PluginLogEntry
from plugin_server.plugins.meta.capture import CAPTURE_TASK
from plugin_server.plugins.sandbox import PluginExports
from plugin_server.workers.pool import WorkerPool
from tests.acceptance.plugin_fixtures import PLUGIN_NAME, RESULTS, clean_plugin_cache, install_spec, pool, server, spec_event  # noqa: F401
from tests.plugins.meta.test_capture import pop_task
from tests.plugins.sandbox_helpers import compile_source

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.redis]

TEST_MMDB = Path(__file__).resolve().parents[1] / "data" / "GeoLite2-City-Test.mmdb"


def own(properties: dict[str, Any]) -> dict[str, Any]:
    """``properties`` without the chain's $plugins_succeeded / $plugins_failed markers."""
    return {key: value for key, value in properties.items() if not key.startswith("$plugins_")}


def run(pool: Callable[[], WorkerPool], source: str, events: int = 1, **config: Any) -> list[dict[str, Any]]:
    """Install ``source`` as plugin 60 / config 39 and run ``events`` $test events of team 2."""
    install_spec(source, **config)
    return pool().process_events([spec_event() for _ in range(events)])


def test_empty_plugins() -> None:
    """Empty code: the exports table has the six event methods (and run_every_*), all None; no jobs."""
    exports = compile_source("")
    assert exports == PluginExports()
    for name in ("on_event", "on_snapshot", "process_event", "process_event_batch", "setup_plugin", "teardown_plugin"):
        assert getattr(exports, name) is None


@pytest.mark.parametrize("wait", [0.0, 0.5], ids=["setupPlugin sync", "setupPlugin async (setup waits 500 ms)"])
def test_setup_plugin_fills_global_before_events(pool, wait: float) -> None:  # type: ignore[no-untyped-def]
    """setup_plugin stores "haha" in meta.global_ (after waiting, in the second case); process_event copies it
    into event["event"] → the event is named "haha" (setup finishes before the instance is used)."""
    source = (
        "import time\n"
        f"def setup_plugin(meta):\n    time.sleep({wait})\n    meta.global_['data'] = 'haha'\n"
        "def process_event(event, meta):\n    event['event'] = meta.global_['data']\n    return event\n"
    )
    assert [e["event"] for e in run(pool, source)] == ["haha"]


RENAME_EVENT = "def process_event(event, meta):\n    event['event'] = 'changed event'\n    return event\n"
RENAME_BATCH = (
    "def process_event_batch(events, meta):\n"
    "    for event in events:\n        event['event'] = 'changed event'\n    return events\n"
)
RENAME_ASSIGNED = "def rename(event, meta):\n    event['event'] = 'changed event'\n    return event\n"


@pytest.mark.parametrize(
    "source",
    [
        RENAME_EVENT,
        RENAME_BATCH,
        "import time\ndef process_event(event, meta):\n    time.sleep(0.01)\n"
        "    event['event'] = 'changed event'\n    time.sleep(0.01)\n    return event\n",
        RENAME_ASSIGNED + "process_event = rename\n",
        RENAME_ASSIGNED + "processEvent = rename\n",
    ],
    ids=["processEvent", "processEventBatch", "processEvent with waits", "module.exports override", "exports set"],
)
def test_process_event_and_batch_rename(pool, source: str) -> None:  # type: ignore[no-untyped-def]
    """process_event (or the batch form, or a function bound to the name) renames the event to "changed event",
    both per event and through the batch path."""
    install_spec(source)
    started = pool()
    assert [e["event"] for e in started.process_events([spec_event(), spec_event()])] == ["changed event"] * 2
    assert [e["event"] for e in started.process_event_batch([spec_event(), spec_event()])] == ["changed event"] * 2


def test_meta_config(pool) -> None:  # type: ignore[no-untyped-def]
    """process_event sets properties = meta.config → {localhostIP: "94.224.212.175"} (no default for it needed)."""
    (out,) = run(pool, "def process_event(event, meta):\n    event['properties'] = dict(meta.config)\n    return event\n")
    assert own(out["properties"]) == {"localhostIP": "94.224.212.175"}


def test_meta_cache_set_get(pool) -> None:  # type: ignore[no-untyped-def]
    """setup sets counter 0; process_event reads it (default 999), sets counter+1 and writes counter+1 → 1, 2, 3."""
    source = (
        "def setup_plugin(meta):\n    meta.cache.set('counter', 0)\n"
        "def process_event(event, meta):\n"
        "    counter = meta.cache.get('counter', 999)\n"
        "    meta.cache.set('counter', counter + 1)\n"
        "    event['properties']['counter'] = counter + 1\n    return event\n"
    )
    assert [e["properties"]["counter"] for e in run(pool, source, events=3)] == [1, 2, 3]


def test_meta_cache_set_ttl(pool, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """counter+1 stored with a 1 s TTL → 1, 2, then once the key expired (≥ 1 s later) → 1 again."""
    source = (
        "def setup_plugin(meta):\n    meta.cache.set('counter', 0)\n"
        "def process_event(event, meta):\n"
        "    counter = meta.cache.get('counter', 0)\n"
        "    meta.cache.set('counter', counter + 1, 1)\n"
        "    event['properties']['counter'] = counter + 1\n    return event\n"
    )
    install_spec(source)
    started = pool()
    counts = [started.process_events([spec_event()])[0]["properties"]["counter"] for _ in range(2)]
    deadline = time.monotonic() + 3
    while redis_client.exists("@plugin/60/2/counter") and time.monotonic() < deadline:
        time.sleep(0.05)  # Redis expires the key on its own clock
    counts.append(started.process_events([spec_event()])[0]["properties"]["counter"])
    assert counts == [1, 2, 1]


def test_meta_cache_incr(pool) -> None:  # type: ignore[no-untyped-def]
    """setup sets counter 0; process_event writes meta.cache.incr('counter') → 1, 2, 3."""
    source = (
        "def setup_plugin(meta):\n    meta.cache.set('counter', 0)\n"
        "def process_event(event, meta):\n    event['properties']['counter'] = meta.cache.incr('counter')\n    return event\n"
    )
    assert [e["properties"]["counter"] for e in run(pool, source, events=3)] == [1, 2, 3]


def test_console_log(pool) -> None:  # type: ignore[no-untyped-def]
    """print(event name) of `logged event` → one CONSOLE/LOG entry of config 39 with message `logged event`."""
    install_spec("def process_event(event, meta):\n    print(event['event'])\n    return event\n")
    pool().process_events([spec_event("logged event")])
    entries = list(PluginLogEntry.objects.filter(plugin_config_id=39, source="CONSOLE").values_list("type", "message"))
    assert entries == [("LOG", "logged event")]


def test_fetch(pool, server) -> None:  # type: ignore[no-untyped-def]
    """meta.fetch of <server>/results.json?query=fetched stores the JSON → the server saw that URL once and the
    properties equal {count: 2, query: "bla", results: [true, true]}."""
    url, paths = server
    source = (
        "def process_event(event, meta):\n"
        f"    event['properties'] = meta.fetch('{url}/results.json?query=fetched').json()\n    return event\n"
    )
    (out,) = run(pool, source)
    assert paths == ["/results.json?query=fetched"]
    assert own(out["properties"]) == RESULTS


def test_attachments(pool) -> None:  # type: ignore[no-untyped-def]
    """properties = meta.attachments → {maxmindMmdb: {content_type, file_name "test.txt", contents b"test"}}."""
    source = (
        "def process_event(event, meta):\n"
        "    event['properties']['attachments'] = {k: {'content_type': v['content_type'], 'file_name': v['file_name'],"
        " 'contents': v['contents'].decode()} for k, v in meta.attachments.items()}\n"
        "    event['properties']['is_bytes'] = isinstance(meta.attachments['maxmindMmdb']['contents'], bytes)\n"
        "    return event\n"
    )
    (out,) = run(pool, source)
    assert out["properties"]["attachments"] == {
        "maxmindMmdb": {"content_type": "application/octet-stream", "file_name": "test.txt", "contents": "test"}
    }
    assert out["properties"]["is_bytes"] is True


def test_run_every(pool) -> None:  # type: ignore[no-untyped-def]
    """run_every_minute/hour/day → the schedule table has exactly those three, in that order, each with config 39."""
    install_spec("".join(f"def {name}(meta):\n    return 1\n" for name in ("run_every_minute", "run_every_hour", "run_every_day")))
    schedule = pool().scheduled_tasks()
    assert list(schedule) == ["runEveryMinute", "runEveryHour", "runEveryDay"]
    assert schedule == {"runEveryMinute": [39], "runEveryHour": [39], "runEveryDay": [39]}


@pytest.mark.parametrize(
    ("properties", "distinct_id"),
    [({"random": "properties"}, PLUGIN_NAME), ({"random": "properties", "distinct_id": "custom id"}, "custom id")],
    ids=["posthog in runEvery", "posthog.capture accepts user-defined distinct id"],
)
def test_posthog_capture_in_run_every(pool, unique_name: str, redis_client: redis.Redis, properties, distinct_id) -> None:  # type: ignore[no-untyped-def]
    """run_every_minute captures my-new-event and returns "haha" → the task returns "haha"; one process_event_with_plugins task on the plugins queue with
    args [distinct_id, None, None, data, 2, ts, ts] and no kwargs; the distinct id is the plugin's name (its row is
    loaded here; without one it is plugin-id-60, see tests/plugins/meta/test_capture.py) or the user's own."""
    install_spec(f"def run_every_minute(meta):\n    posthog.capture('my-new-event', {properties!r})\n    return 'haha'\n")
    try:
        with override_settings(PLUGINS_CELERY_QUEUE=unique_name):
            assert pool().run_scheduled(39, "runEveryMinute") == "haha"
            envelope, args, kwargs = pop_task(redis_client, unique_name)
    finally:
        redis_client.delete(unique_name)
    assert envelope["headers"]["task"] == CAPTURE_TASK == "posthog.tasks.process_event.process_event_with_plugins"
    assert kwargs == {}
    assert args[0] == distinct_id and args[1:3] == [None, None] and args[4] == 2 and args[5] == args[6]
    data = args[3]
    assert (data["distinct_id"], data["event"]) == (distinct_id, "my-new-event")
    assert data["properties"]["$lib"] == "posthog-plugin-server"
    assert data["properties"]["random"] == "properties"
    assert data["properties"]["distinct_id"] == distinct_id


def test_on_event_and_on_snapshot_fetch(pool, server) -> None:  # type: ignore[no-untyped-def]
    """on_event fetches ...?query=<event name> → called with query=onEvent; on_snapshot → query=$snapshot."""
    url, paths = server
    install_spec(
        f"def on_event(event, meta):\n    meta.fetch('{url}/results.json?query=' + event['event'])\n"
        f"def on_snapshot(event, meta):\n    meta.fetch('{url}/results.json?query=' + event['event'])\n"
    )
    pool().on_events([spec_event("onEvent"), spec_event("$snapshot")])
    assert sorted(paths) == ["/results.json?query=$snapshot", "/results.json?query=onEvent"]


# --- Lazy instance (vm.lazy.test.ts) ----------------------------------------------------


def test_lazy_instance_get_methods_and_loaded_log(pool, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    """An instance with process_event and run_every_minute: process_event runs, there is no batch method (the
    batch path falls back to process_event), an unknown task is not found, run_every_minute is in the schedule;
    loading logs `Loaded plugin test-maxmind-plugin ID 60 (config 39)`, clears the config's old error and writes
    a SYSTEM/INFO `Plugin loaded` line."""
    caplog.set_level(logging.INFO, logger="plugin_server.workers.effects")
    install_spec(
        "def process_event(event, meta):\n    event['event'] = 'seen'\n    return event\n"
        "def run_every_minute(meta):\n    return 1\n",
        error={"message": "old", "time": "2020-01-01T00:00:00Z"},
    )
    started = pool()
    assert [e["event"] for e in started.process_event_batch([spec_event()])] == ["seen"]
    assert started.scheduled_tasks() == {"runEveryMinute": [39], "runEveryHour": [], "runEveryDay": []}
    with pytest.raises(PluginError, match='Task "unknownTask" not found'):
        started.run_job(39, "unknownTask", {})
    assert PluginConfig.objects.get(id=39).error is None
    assert PluginLogEntry.objects.filter(plugin_config_id=39, source="SYSTEM", type="INFO", message__contains="Plugin loaded").exists()
    assert f"Loaded plugin {PLUGIN_NAME} ID 60 (config 39)" in caplog.messages


def test_lazy_instance_failing_creation_has_no_methods(pool) -> None:  # type: ignore[no-untyped-def]
    """When creation fails (a module body that raises): events pass unchanged, the schedule is empty, tasks not found."""
    install_spec("raise ValueError('no instance')\ndef run_every_minute(meta):\n    return 1\n")
    started = pool()
    event = spec_event()
    (out,) = started.process_events([event])
    assert out["event"] == "$test" and "$plugins_succeeded" not in out["properties"]
    assert started.scheduled_tasks() == {"runEveryMinute": [], "runEveryHour": [], "runEveryDay": []}
    with pytest.raises(PluginError):
        started.run_scheduled(39, "runEveryMinute")


# --- GeoIP (mmdb.test.ts) as a plugin sees it ---------------------------------------------------

LOCATE = (
    "def process_event(event, meta):\n"
    "    try:\n"
    "        found = meta.geoip.locate('89.160.20.129')\n"
    "        event['properties']['city'] = found['city']['names']['en']\n"
    "        event['properties']['junk'] = meta.geoip.locate('asdfgh')\n"
    "    except Exception as error:\n"
    "        event['properties']['error'] = str(error)\n"
    "    return event\n"
)


def test_geoip_disabled_is_not_available_in_the_worker(pool) -> None:  # type: ignore[no-untyped-def]
    """DISABLE_MMDB=true (even with a database file) → a lookup of 89.160.20.129 from a plugin fails with
    `IP location capabilities are not available in this PostHog instance!`."""
    with override_settings(DISABLE_MMDB=True, MMDB_PATH=str(TEST_MMDB)):
        (out,) = run(pool, LOCATE)
    assert own(out["properties"]) == {"error": "IP location capabilities are not available in this PostHog instance!"}


def test_geoip_lookup_through_the_worker(pool) -> None:  # type: ignore[no-untyped-def]
    """With the test City database: 89.160.20.129 → city Linköping, `asdfgh` → None, through a plugin's meta.geoip."""
    with override_settings(DISABLE_MMDB=False, MMDB_PATH=str(TEST_MMDB)):
        (out,) = run(pool, LOCATE)
    assert own(out["properties"]) == {"city": "Linköping", "junk": None}
