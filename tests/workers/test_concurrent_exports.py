"""Export calls wait on meta concurrently in one worker, each with its own limits (real workers, real HTTP)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from plugin_server.models import PluginConfig
from plugin_server.plugins.meta.fetch import FetchLimits, PluginFetch
from plugin_server.plugins.meta.host import MetaHost
from plugin_server.workers.pool import PoolSettings, WorkerPool
from tests.webhook import RecordingWebhook, webhook  # noqa: F401 — the fixture
from tests.workers.helpers import event, install, team_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

FETCHING = """
def on_event(event, meta):
    if event['properties'].get('loop'):
        while True:
            pass
    meta.fetch(meta.config['url'] + '/' + event['properties'].get('path', str(event['properties']['n'])))
"""


@pytest.fixture(autouse=True)
def slower_webhook(webhook: RecordingWebhook) -> None:
    webhook.delay = 0.2
    webhook.slow_delay = 6.0  # past the pool's 4 s limit (generous: the machine is shared)


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    host = MetaHost(fetch=PluginFetch(FetchLimits(timeout=10, max_response_bytes=1_000_000, allow_private_networks=True)))
    pool = WorkerPool(PoolSettings.from_config(concurrency=1, tasks_per_worker=10, task_timeout=4.0, memory_limit_mb=512, grace=1.0), host=host)
    pool.start()
    yield pool
    pool.stop()


def test_calls_waiting_on_fetch_overlap(pool: WorkerPool, webhook: RecordingWebhook) -> None:
    """20 exports of a 200 ms webhook, 10 at once, take about 2 rounds of 200 ms, not 4 s."""
    config = install(FETCHING, config={"url": webhook.url})
    pool.reload()
    events = [event(team_of(config), n=n) for n in range(20)]
    pool.export(config.id, events[:1], 10)  # set the plugin up first
    started = time.monotonic()
    stats = pool.export(config.id, events, 10)
    elapsed = time.monotonic() - started
    assert stats == {"calls": 20, "timeouts": 0}
    assert sorted(webhook.seen[1:]) == sorted(f"/{n}" for n in range(20))
    assert elapsed < 2.0, elapsed  # one at a time: 4 s


def test_one_at_a_time_when_the_cap_is_one(pool: WorkerPool, webhook: RecordingWebhook) -> None:
    """The per-config cap holds: with 1, the calls run one after another."""
    config = install(FETCHING, config={"url": webhook.url})
    pool.reload()
    events = [event(team_of(config), n=n) for n in range(5)]
    pool.export(config.id, events[:1], 1)
    started = time.monotonic()
    assert pool.export(config.id, events, 1) == {"calls": 5, "timeouts": 0}
    assert time.monotonic() - started >= 5 * webhook.delay


def test_each_call_keeps_its_own_time_limit(pool: WorkerPool, webhook: RecordingWebhook) -> None:
    """A looping call and a call waiting past its limit time out alone; the others, waiting meanwhile, succeed."""
    config = install(FETCHING, config={"url": webhook.url})
    pool.reload()
    events = [event(team_of(config), n=n) for n in range(8)]
    events[2]["properties"]["loop"] = True
    events[5]["properties"]["path"] = "slow/5"
    pool.export(config.id, [event(team_of(config), n=99)], 10)
    stats = pool.export(config.id, events, 10)
    assert stats == {"calls": 8, "timeouts": 2}
    assert sorted(path for path in webhook.seen if path not in ("/99", "/slow/5")) == sorted(
        f"/{n}" for n in range(8) if n not in (2, 5)
    )
    config.refresh_from_db()
    assert config.error is not None and "Script execution timed out" in config.error["message"]
    assert PluginConfig.objects.get(id=config.id).enabled  # a timeout is the call's, not the worker's


def test_cpu_bound_calls_give_the_same_results(pool: WorkerPool) -> None:
    """Calls that never wait run one after another, as before: every one runs, none times out."""
    config = install("def on_event(event, meta):\n    x = 0\n    for i in range(20000):\n        x += i\n")
    pool.reload()
    events = [event(team_of(config), n=n) for n in range(30)]
    assert pool.export(config.id, events, 10) == {"calls": 30, "timeouts": 0}


def test_a_javascript_exporters_calls_run_one_at_a_time(pool: WorkerPool, webhook: RecordingWebhook) -> None:
    """A JS plugin's calls share one isolate and its promise bridge: its exports run one after another, all of them."""
    source = "export async function onEvent(event, { config }) {\n    await fetch(config.url + '/' + event.properties.n)\n}\n"
    config = install(json.dumps({"index.js": source, "plugin.json": json.dumps({"main": "index.js"})}), config={"url": webhook.url})
    pool.reload()
    events = [event(team_of(config), n=n) for n in range(4)]
    started = time.monotonic()
    assert pool.export(config.id, events, 10) == {"calls": 4, "timeouts": 0}
    assert time.monotonic() - started >= 4 * webhook.delay
    assert sorted(webhook.seen) == sorted(f"/{n}" for n in range(4))
