"""The meta API as a plugin really uses it: code in a sandboxed worker process,
every call over the worker's pipe to the MetaHost in this (main) process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from django.test import override_settings
from django_q.models import Schedule

from plugin_server.models import PluginConfig, PluginLogEntry, PluginStorage
from plugin_server.plugins.meta.fetch import FetchLimits, PluginFetch
from plugin_server.plugins.meta.geoip import GeoIPLocator, reader_from_bytes
from plugin_server.plugins.meta.host import MetaHost
from plugin_server.workers.pool import PoolSettings, WorkerPool
from tests.factories import create_attachment
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.redis]

TEST_MMDB = Path(__file__).resolve().parents[2] / "data" / "GeoLite2-City-Test.mmdb"


class Answer(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"count": 2, "query": "bla", "results": [true, true]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def host() -> MetaHost:
    # The test's own HTTP server is on loopback: this host may reach it.
    fetch = PluginFetch(FetchLimits(timeout=5, max_response_bytes=1_000_000, allow_private_networks=True))
    return MetaHost(fetch=fetch, geoip=GeoIPLocator(reader_from_bytes(TEST_MMDB.read_bytes())))


@pytest.fixture
def run(host: MetaHost) -> Iterator[object]:
    """Start a pool around ``host`` on first use; run events through it."""
    pools: list[WorkerPool] = []

    def process(events: list[dict[str, object]]) -> list[dict[str, object]]:
        if not pools:
            pools.append(WorkerPool(PoolSettings.from_config(concurrency=1, task_timeout=10.0, memory_limit_mb=512), host=host))
            pools[0].start()
        return pools[0].process_events(events)

    yield process
    for pool in pools:
        pool.stop()


def test_cache_counter_across_events(run, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """It counts 1, 2, 3 with meta.cache get/set from the worker, and incr too."""
    config = install(
        "def setup_plugin(meta):\n    meta.cache.set('counter', 0)\n"
        "def process_event(event, meta):\n"
        "    counter = meta.cache.get('counter', 999)\n"
        "    meta.cache.set('counter', counter + 1)\n"
        "    event['properties']['counter'] = counter + 1\n"
        "    event['properties']['incr'] = meta.cache.incr('hits')\n"
        "    return event\n"
    )
    try:
        out = run([event(config.team_id, n=n) for n in range(3)])
        assert [e["properties"]["counter"] for e in out] == [1, 2, 3]
        assert [e["properties"]["incr"] for e in out] == [1, 2, 3]
    finally:
        redis_client.delete(f"@plugin/{config.plugin_id}/{config.team_id}/counter", f"@plugin/{config.plugin_id}/{config.team_id}/hits")


def test_storage_config_and_attachments(run) -> None:  # type: ignore[no-untyped-def]
    """It hands the worker config with defaults and attachments, and stores through meta.storage."""
    config = install(
        "def process_event(event, meta):\n"
        "    meta.storage.set('last', event['event'])\n"
        "    event['properties']['config'] = meta.config\n"
        "    event['properties']['file'] = meta.attachments['maxmindMmdb']['contents'].decode()\n"
        "    event['properties']['stored'] = meta.storage.get('last')\n"
        "    event['properties']['missing'] = meta.storage.get('nope', 'dflt')\n"
        "    return event\n",
        plugin_fields={"config_schema": {"localhostIP": {"type": "string", "default": ""}, "greeting": {"default": "hi"}}},
        config={"localhostIP": "94.224.212.175"},
    )
    create_attachment(config, "maxmindMmdb", b"test", file_name="test.txt")
    (out,) = run([event(config.team_id, n=7)])
    assert out["properties"]["config"] == {"localhostIP": "94.224.212.175", "greeting": "hi"}
    assert out["properties"]["file"] == "test"
    assert (out["properties"]["stored"], out["properties"]["missing"]) == ("e7", "dflt")
    assert PluginStorage.objects.get(plugin_config_id=config.id, key="last").value == '"e7"'


def test_fetch_geoip_jobs_and_capture(run, server: str, unique_name: str, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """It serves fetch (response object in the worker), geoip, jobs and capture to a plugin in a worker."""
    config = install(
        "def process_event(event, meta):\n"
        f"    response = meta.fetch('{server}/results.json?query=fetched')\n"
        "    event['properties']['fetched'] = response.json()\n"
        "    event['properties']['status'] = response.status_code\n"
        "    event['properties']['city'] = meta.geoip.locate('89.160.20.129')['city']['names']['en']\n"
        "    meta.jobs.reply({'text': 'hi'}).run_in(seconds=30)\n"
        "    posthog.capture('my-new-event', {'random': 'properties'})\n"
        "    return event\n"
    )
    with override_settings(PLUGINS_CELERY_QUEUE=unique_name, DISABLE_MMDB=False):
        (out,) = run([event(config.team_id)])
    try:
        assert out["properties"]["fetched"] == {"count": 2, "query": "bla", "results": [True, True]}
        assert out["properties"]["status"] == 200
        assert out["properties"]["city"] == "Linköping"
        assert redis_client.llen(unique_name) == 1
    finally:
        redis_client.delete(unique_name)
    schedule = Schedule.objects.get()
    assert '"type":"reply"' in schedule.args and '"pluginConfigId":%d' % config.id in schedule.args


def test_refused_call_is_an_exception_the_plugin_can_catch(run) -> None:  # type: ignore[no-untyped-def]
    """It raises a refused meta call inside the plugin, which may catch it and go on; nothing is recorded as an error."""
    config = install(
        "def process_event(event, meta):\n"
        "    try:\n"
        "        meta.fetch('file:///etc/passwd')\n"
        "    except Exception as error:\n"
        "        event['properties']['refused'] = str(error)\n"
        "    return event\n"
    )
    (out,) = run([event(config.team_id)])
    assert "only http and https" in out["properties"]["refused"]
    assert PluginConfig.objects.get(id=config.id).error is None


def test_uncaught_refusal_is_recorded_and_the_event_goes_on(run) -> None:  # type: ignore[no-untyped-def]
    """It records an uncaught meta refusal as the plugin's error and passes the event on unchanged."""
    config = install("def process_event(event, meta):\n    meta.cache.incr('k', 1.5)\n    return event\n")
    (out,) = run([event(config.team_id, n=3)])
    assert out["event"] == "e3"
    error = PluginConfig.objects.get(id=config.id).error
    assert "incr: by must be an integer" in error["message"]
    assert PluginLogEntry.objects.filter(plugin_config_id=config.id, source="PLUGIN", type="ERROR").exists()
