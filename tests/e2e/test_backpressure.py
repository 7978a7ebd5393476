"""Back-pressure and graceful shutdown of a real `./manage.py run_plugin_server` (issue 4, part 6).

A long queue (20,000 Celery messages of ~3 KB, ~58 MB of payload) in front of a
slow plugin: the server holds at most three batches in flight (one storing,
one in the plugins, one decoding) and its memory
does not grow with the queue. Then SIGINT mid-stream: exit 0 within
SHUTDOWN_TIMEOUT, the batches in hand are stored and acknowledged, taking
stops, and the rest stays on the queue.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, cast

import pytest
import redis

from benchmarks.ingest_celery import process_tree, rss_bytes
from plugin_server.models import DeadLetter, Event, Team
from tests.e2e import test_server_e2e
from tests.e2e.test_server_e2e import stored, wait_for
from tests.factories import create_plugin, create_plugin_config, create_team
from tests.ingestion.celery_tasks import celery_app, send_event_task, task_args

start_server = test_server_e2e.start_server  # the e2e fixture: servers on this test's database and queue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

TOTAL = 20_000
BATCH_SIZE = 50
SHUTDOWN_TIMEOUT = 15.0
PAD = "x" * 1400  # with base64 and the envelope: ~3 KB a message
# 10 ms an event, one worker: ~100 events/s, far behind a queue of 20,000.
SLOW_PLUGIN = """
import time

def process_event(event, meta):
    time.sleep(0.01)
    event["properties"]["slow"] = True
    return event
"""


@pytest.fixture
def slow_team() -> Team:
    team = create_team()
    create_plugin_config(team=team, plugin=create_plugin(organization=team.organization, source=SLOW_PLUGIN))
    return team


def push_long_queue(client: redis.Redis, queue: str, team: Team, total: int) -> int:
    """LPUSH ``total`` Celery messages (distinct ids ``bp-<n>``, n in order); returns the payload bytes.

    One message is sent with Celery's own producer to learn the envelope;
    the rest are that envelope with their own task id and arguments, pushed
    in one pipeline (20,000 ``send_task`` calls would take most of the test)."""
    staging = f"{queue}-template"
    with celery_app() as app:
        send_event_task(app, staging, task_args({"event": "bp", "properties": {}}, team_id=team.id))
    envelope = json.loads(cast(bytes, client.rpop(staging)))
    _, kwargs, embed = json.loads(base64.b64decode(envelope["body"]))
    now = datetime.now(timezone.utc).isoformat()
    payload_bytes = 0
    with client.pipeline(transaction=False) as pipe:
        for index in range(total):
            task_id = str(uuid.uuid4())
            args = task_args({"event": "bp", "properties": {"n": index, "pad": PAD}}, distinct_id=f"bp-{index}", team_id=team.id, now=now)
            message: dict[str, Any] = {
                **envelope,
                "body": base64.b64encode(json.dumps([args, kwargs, embed]).encode()).decode(),
                "headers": {**envelope["headers"], "id": task_id, "root_id": task_id, "argsrepr": "", "kwargsrepr": ""},
                "properties": {**envelope["properties"], "correlation_id": task_id, "delivery_tag": str(uuid.uuid4())},
            }
            raw = json.dumps(message).encode()
            payload_bytes += len(raw)
            pipe.lpush(queue, raw)
            if index % 2000 == 1999:
                pipe.execute()
        pipe.execute()
    return payload_bytes


def process_tree_rss(root: int) -> int:
    """RSS in bytes of the server and all its descendants (the worker processes), from /proc."""
    return rss_bytes(process_tree(root))


class InFlight:
    """Reads the Celery source's in-flight store of the (single) server on ``queue``."""

    def __init__(self, client: redis.Redis, queue: str) -> None:
        self.client = client
        self.prefix = f"@posthog-plugin-server/celery/{queue}/"

    def consumers(self) -> list[str]:
        return sorted(member.decode() for member in cast(set[bytes], self.client.smembers(self.prefix + "consumers")))

    def count(self, consumer_id: str) -> int:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hlen(f"{self.prefix}inflight/{consumer_id}")
            pipe.llen(f"{self.prefix}landing/{consumer_id}")
            hashed, landed = pipe.execute()
        return int(hashed) + int(landed)

    def distinct_ids(self, consumer_id: str) -> set[str]:
        """The distinct ids of the messages taken and not yet acknowledged."""
        raws = cast(list[bytes], self.client.hvals(f"{self.prefix}inflight/{consumer_id}"))
        return {json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0] for raw in raws}


def test_a_long_queue_behind_a_slow_plugin_keeps_in_flight_and_memory_bounded_and_sigint_finishes_in_hand_work(
    slow_team: Team, unique_name: str, redis_client: redis.Redis, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """20,000 messages (~58 MB) queued in front of a plugin that sleeps 10 ms an event, INGESTION_BATCH_SIZE=50:
    for 5 s the messages taken but not acknowledged never exceed 2 × 50 and the RSS of the server and its workers
    grows by far less than the queue's payload. SIGINT then: exit 0 within SHUTDOWN_TIMEOUT; every message that was
    in flight at the signal is stored (not handed back); at most the batch taken ahead is taken after it; every
    taken event is stored once; nothing is left in flight; the rest is still on the queue, in order."""
    payload = push_long_queue(redis_client, unique_name, slow_team, TOTAL)
    assert payload > 35 * 2**20, "messages must be ~3 KB for the memory bound to mean anything"
    server = start_server(INGESTION_BATCH_SIZE=str(BATCH_SIZE), SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT), CELERY_CONSUMER_HEARTBEAT_TTL="10")
    inflight = InFlight(redis_client, unique_name)
    wait_for(lambda: stored(slow_team) >= 2 * BATCH_SIZE, 30, "the first stored batches", server)
    (consumer_id,) = inflight.consumers()
    baseline_rss = process_tree_rss(server.pid)

    peak_in_flight, peak_rss, samples = 0, baseline_rss, 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert server.poll() is None, f"the server exited with {server.returncode}"
        peak_in_flight = max(peak_in_flight, inflight.count(consumer_id))
        peak_rss = max(peak_rss, process_tree_rss(server.pid))
        samples += 1
        time.sleep(0.01)
    stored_while_sampling = stored(slow_team)
    assert stored_while_sampling < TOTAL // 2, "the plugin must keep the server far behind the queue"
    assert samples > 100
    assert 0 < peak_in_flight <= 3 * BATCH_SIZE, f"in flight peaked at {peak_in_flight} (bound {3 * BATCH_SIZE})"
    # Reading the whole queue would hold ~58 MB of raw bytes alone (and several
    # times that decoded); three batches of 50 are ~450 KB.
    growth = peak_rss - baseline_rss
    assert growth < payload / 4, f"RSS grew by {growth / 2**20:.1f} MB with {payload / 2**20:.0f} MB queued"

    in_hand = inflight.distinct_ids(consumer_id)
    queued_at_signal = cast(int, redis_client.llen(unique_name))
    signalled = time.monotonic()
    server.send_signal(signal.SIGINT)
    assert server.wait(SHUTDOWN_TIMEOUT + 5) == 0
    took = time.monotonic() - signalled
    assert took < SHUTDOWN_TIMEOUT, f"graceful stop took {took:.1f}s"

    left = cast(int, redis_client.llen(unique_name))
    count = stored(slow_team)
    stored_ids = set(Event.objects.filter(team=slow_team).values_list("distinct_id", flat=True))
    assert in_hand and in_hand <= stored_ids, "work in flight at the signal was handed back instead of finished"
    assert queued_at_signal - left <= 3 * BATCH_SIZE, "the server went on taking after the signal"
    assert count == TOTAL - left == len(stored_ids), "every taken event stored once, the rest on the queue"
    assert not DeadLetter.objects.filter(queue=unique_name).exists()
    assert inflight.consumers() == []
    assert redis_client.exists(f"{inflight.prefix}inflight/{consumer_id}", f"{inflight.prefix}landing/{consumer_id}") == 0
    # Taken in queue order: what is stored is a prefix, the next message is the one after it.
    assert stored_ids == {f"bp-{index}" for index in range(count)}
    next_raw = cast(bytes, redis_client.lindex(unique_name, -1))
    assert json.loads(base64.b64decode(json.loads(next_raw)["body"]))[0][0] == f"bp-{count}"
    redis_client.delete(unique_name)
