"""The consumer loop with the real Celery source, Ingester, Postgres and Redis: nothing lost, nothing twice."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import redis
from django.db import connection

from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.sources.celery import CelerySource
from plugin_server.metrics import (
    INGESTION_EVENTS_DUPLICATE,
    INGESTION_EVENTS_STORED,
    INGESTION_MESSAGES_INVALID,
    INGESTION_RETRIES,
    RecordingMetrics,
)
from plugin_server.models import DeadLetter, Event, Person
from tests.factories import create_team
from tests.ingestion.celery_tasks import celery_app, die, send_event_task, task_args

pytestmark = [pytest.mark.redis]

FAST = {"poll_timeout": 0.0, "retry_backoff": 0.0, "retry_backoff_max": 0.0, "max_message_bytes": 1_000_000}


def consumer_for(source: CelerySource, **options: Any) -> Consumer:
    return Consumer(source, Ingester(), pool=None, options=ConsumerOptions.from_settings(**{**FAST, **options}))


def drain(consumer: Consumer, limit: int = 50) -> int:
    """Run bounded batches until the queue gives nothing; returns the messages handled."""
    handled = 0
    for _ in range(limit):
        taken = consumer.run_once()
        if taken == 0:
            return handled
        handled += taken
    raise AssertionError("the queue did not drain")


def send(queue: str, *arg_lists: list[Any], protocol: int = 2) -> None:
    with celery_app(protocol) as app:
        for args in arg_lists:
            send_event_task(app, queue, args)


def envelope(body: Any, task: str = "posthog.tasks.process_event.process_event_with_plugins") -> bytes:
    return json.dumps(
        {
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"task": task, "id": "hand-made"},
            "properties": {"body_encoding": "base64", "delivery_tag": "t"},
        }
    ).encode()


@pytest.mark.django_db
def test_events_are_stored_and_acknowledged(source: CelerySource, unique_name: str, recording_metrics: RecordingMetrics) -> None:
    """Tasks sent by Celery (protocol 1 and 2) are stored in posthog_event, then acknowledged."""
    team = create_team()
    send(unique_name, *[task_args({"event": f"e{i}", "properties": {}}, distinct_id=f"d{i}", team_id=team.id) for i in range(4)])
    send(unique_name, task_args({"event": "p1", "properties": {}}, team_id=team.id), protocol=1)
    consumer = consumer_for(source, batch_size=2)
    assert drain(consumer) == 5
    assert sorted(Event.objects.filter(team=team).values_list("event", flat=True)) == ["e0", "e1", "e2", "e3", "p1"]
    assert source.in_flight() == 0
    assert recording_metrics.total(INGESTION_EVENTS_STORED) == 5


@pytest.mark.django_db
def test_a_message_delivered_twice_is_stored_once(
    source: CelerySource, unique_name: str, redis_client: redis.Redis, recording_metrics: RecordingMetrics
) -> None:
    """The same Celery message delivered again (after a crash) is not stored twice: its uuid decides."""
    team = create_team()
    send(unique_name, task_args({"event": "once", "properties": {}}, team_id=team.id))
    message = redis_client.lindex(unique_name, 0)
    consumer = consumer_for(source)
    drain(consumer)
    redis_client.lpush(unique_name, message)  # the re-delivery
    drain(consumer)
    assert Event.objects.filter(team=team, event="once").count() == 1
    assert recording_metrics.total(INGESTION_EVENTS_DUPLICATE) == 1


@pytest.mark.django_db
def test_bad_input_is_dead_lettered_and_the_loop_goes_on(
    source: CelerySource, unique_name: str, redis_client: redis.Redis, recording_metrics: RecordingMetrics
) -> None:
    """Each kind of bad message is kept as a dead letter with its reason; the good events around them are stored."""
    team = create_team()
    good = task_args({"event": "good", "properties": {}}, team_id=team.id)
    send(unique_name, good)
    redis_client.lpush(unique_name, b"this is not an envelope")
    redis_client.lpush(unique_name, b'{"body": "\xff\xfe invalid utf-8"}')
    send(unique_name, task_args(team_id=team.id)[:3])  # wrong number of args
    send(unique_name, [1, 2, 3, "data", team.id, "now", None])  # data not an object
    send(unique_name, task_args({"event": "x"}, team_id=team.id)[:6] + [None], protocol=1)
    with celery_app() as app:
        send_event_task(app, unique_name, good, name="posthog.tasks.something_else")
    send(unique_name, task_args({"event": "orphan", "properties": {}}, team_id=team.id + 1000))  # unknown team
    send(unique_name, task_args({"event": "huge", "properties": {"blob": "x" * 5_000_000}}, team_id=team.id))
    redis_client.lpush(unique_name, envelope([task_args(team_id=team.id), {}, {}]).replace(b'"content-type": "application/json"', b'"content-type": "application/x-python-serialize"'))
    send(unique_name, good)

    consumer = consumer_for(source, batch_size=4)
    assert drain(consumer) == 11
    stored = list(Event.objects.filter(team=team).values_list("event", flat=True))
    assert sorted(stored) == ["good", "good", "x"]
    reasons = sorted(DeadLetter.objects.values_list("reason", flat=True))
    assert reasons == sorted(
        ["bad_envelope", "bad_envelope", "bad_arguments", "data_not_object", "unknown_task", "unknown_team", "too_large", "bad_content_type"]
    )
    orphan = DeadLetter.objects.get(reason="unknown_team")
    assert orphan.team_id == team.id + 1000 and orphan.queue == unique_name
    assert b"orphan" in base64.b64decode(json.loads(bytes(orphan.payload))["body"])
    assert recording_metrics.total(INGESTION_MESSAGES_INVALID) == 8
    assert source.in_flight() == 0


@pytest.mark.django_db
def test_pause_holds_the_queue_and_resume_drains_it(source: CelerySource, unique_name: str, redis_client: redis.Redis) -> None:
    """Given 6 tasks: a paused consumer takes none; after resume the list is emptied (acceptance "Queue")."""
    team = create_team()
    send(unique_name, *[task_args({"event": "$pageview", "properties": {}}, distinct_id="my-id", team_id=team.id) for _ in range(6)])
    consumer = consumer_for(source, batch_size=2)
    consumer.run_once()
    assert redis_client.llen(unique_name) < 6
    consumer.pause()
    length = redis_client.llen(unique_name)
    for _ in range(5):
        assert consumer.run_once() == 0
    assert redis_client.llen(unique_name) == length
    consumer.resume()
    drain(consumer)
    assert redis_client.llen(unique_name) == 0
    assert Event.objects.filter(team=team).count() == 6


def _psycopg_connect() -> psycopg.Connection:
    settings = connection.settings_dict
    return psycopg.connect(host=settings["HOST"], port=settings["PORT"] or 5432, user=settings["USER"], dbname=settings["NAME"])


def _set_lock_timeout(value: str | None) -> None:
    """A database-wide lock_timeout (RESET when None); the next connection gets it."""
    name = connection.ops.quote_name(connection.settings_dict["NAME"])
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER DATABASE {name} SET lock_timeout = '{value}'" if value else f"ALTER DATABASE {name} RESET lock_timeout")
    connection.close()


@contextmanager
def events_table_locked(lock_timeout: str) -> Iterator[None]:
    """Another session holds an exclusive lock on posthog_event (as a stuck migration would),
    and our writes give up after ``lock_timeout``: storage fails, again and again."""
    lock = _psycopg_connect()
    lock.execute("LOCK TABLE posthog_event IN ACCESS EXCLUSIVE MODE")
    try:
        _set_lock_timeout(lock_timeout)
        yield
    finally:
        lock.close()
        _set_lock_timeout(None)


@pytest.mark.django_db(transaction=True)
def test_storage_that_keeps_failing_is_retried_then_dead_lettered(
    source: CelerySource, unique_name: str, recording_metrics: RecordingMetrics
) -> None:
    """When posthog_event cannot be written (lock timeouts), the batch is retried with backoff and only then dead-lettered."""
    team = create_team()
    send(unique_name, task_args({"event": "blocked", "properties": {}}, team_id=team.id))
    with events_table_locked("200ms"):
        consumer = consumer_for(source, retry_attempts=3)
        assert consumer.run_once() == 1
    assert recording_metrics.total(INGESTION_RETRIES) == 3
    letter = DeadLetter.objects.get()
    assert letter.reason == "storage_failed" and letter.team_id == team.id
    assert Event.objects.count() == 0
    assert source.in_flight() == 0


@pytest.mark.django_db(transaction=True)
def test_a_dropped_database_connection_is_retried(source: CelerySource, unique_name: str, recording_metrics: RecordingMetrics) -> None:
    """A database connection killed under the loop is replaced and the batch stored on retry."""
    team = create_team()
    send(unique_name, task_args({"event": "survivor", "properties": {}}, team_id=team.id))
    consumer = consumer_for(source)
    connection.ensure_connection()
    # Kill our connection from outside, as a Postgres restart or failover would.
    with _psycopg_connect() as killer:
        pid = connection.connection.info.backend_pid
        killer.execute("SELECT pg_terminate_backend(%s)", [pid])
    # The loop replaces the broken connection (at the batch boundary, or on
    # retry when the break is noticed mid-batch).
    drain(consumer)
    assert Event.objects.filter(team=team, event="survivor").count() == 1
    assert source.in_flight() == 0


@pytest.mark.django_db(transaction=True)
def test_a_stop_during_retries_leaves_the_batch_unacknowledged(source: CelerySource, unique_name: str, redis_client: redis.Redis) -> None:
    """Stopping while storage is retried abandons the batch: unacknowledged, it goes back to the queue on close."""
    team = create_team()
    send(unique_name, task_args({"event": "later", "properties": {}}, team_id=team.id))
    with events_table_locked("100ms"):
        consumer = consumer_for(source, retry_attempts=1000, retry_backoff=0.05, retry_backoff_max=0.05)
        threading.Timer(0.5, consumer.stop).start()
        consumer.run_once()
    assert source.in_flight() == 1
    assert DeadLetter.objects.count() == 0
    source.close()
    assert redis_client.llen(unique_name) == 1


@pytest.mark.django_db(transaction=True)
def test_run_takes_a_batch_ahead_and_finishes_it_after_a_stop(source: CelerySource, unique_name: str) -> None:
    """run() stores every batch (one taken ahead while the other is stored) and, once stopped, returns with nothing left in flight."""
    team = create_team()
    send(unique_name, *[task_args({"event": "ahead", "properties": {}}, distinct_id=f"d{i}", team_id=team.id) for i in range(7)])
    consumer = consumer_for(source, batch_size=2, poll_timeout=0.05)
    runner = threading.Thread(target=consumer.run)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while Event.objects.filter(team=team).count() < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        consumer.stop()
        runner.join(10)
    assert not runner.is_alive()
    assert Event.objects.filter(team=team).count() == 7
    assert consumer.batches == 4
    assert source.in_flight() == 0


class InHandAtSuspects(CelerySource):
    """A Celery source that notes how many messages its consumer holds whenever it decodes a suspect."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.in_hand_at_suspects: list[int] = []

    def decode(self, delivery: Any, max_bytes: int, max_depth: int) -> Any:
        if delivery.attempts > 1:
            self.in_hand_at_suspects.append(self.in_flight())
        return super().decode(delivery, max_bytes, max_depth)


def run_until(consumer: Consumer, done: Any, seconds: float = 30) -> None:
    """Run the consumer's pipelined loop on a thread until ``done()``, then stop it and wait for it."""
    runner = threading.Thread(target=consumer.run)
    runner.start()
    try:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        consumer.stop()
        runner.join(10)
    assert not runner.is_alive()


@pytest.mark.django_db(transaction=True)
def test_the_pipeline_keeps_one_persons_events_in_queue_order_and_takes_no_batch_beside_a_suspect(unique_name: str) -> None:
    """run() overlaps three batches, yet one person's $set calls land in queue order (the last wins), and a
    batch holding a message a dead consumer had is decoded, stored and acknowledged with nothing else in hand."""
    team = create_team()
    send(unique_name, *[task_args({"event": "ordered", "properties": {"$set": {"n": index}}}, distinct_id="one", team_id=team.id) for index in range(3)])
    crashed = CelerySource(queue=unique_name)
    crashed.start()
    assert len(crashed.poll(2, timeout=0)) == 2
    die(crashed)  # the two events it held come back as suspects, each alone
    send(unique_name, *[task_args({"event": "ordered", "properties": {"$set": {"n": index}}}, distinct_id="one", team_id=team.id) for index in range(3, 21)])
    source = InHandAtSuspects(queue=unique_name)
    source.start()
    try:
        consumer = consumer_for(source, batch_size=2, poll_timeout=0.05)
        run_until(consumer, lambda: Event.objects.filter(team=team).count() == 21)
        assert Event.objects.filter(team=team).count() == 21
        assert source.in_hand_at_suspects == [1, 1]
        assert Person.objects.get(team=team).properties["n"] == 20
        assert source.in_flight() == 0
    finally:
        source.close()
        crashed.close()


@pytest.mark.django_db
def test_a_timestamp_in_the_year_30000_is_dead_lettered(source: CelerySource, unique_name: str, recording_metrics: RecordingMetrics) -> None:
    """An event whose timestamp no column can hold is kept as a dead letter with its reason, and acknowledged."""
    team = create_team()
    send(unique_name, task_args({"event": "far future", "properties": {}, "timestamp": "30000-01-01T00:00:00Z"}, team_id=team.id))
    drain(consumer_for(source))
    assert not Event.objects.filter(team=team, event="far future").exists()
    letter = DeadLetter.objects.get(reason="timestamp_out_of_range")
    assert letter.team_id == team.id and b"30000-01-01" in bytes(letter.payload)
    assert source.in_flight() == 0


def test_a_redis_that_is_away_is_retried_not_fatal(unique_name: str, recording_metrics: RecordingMetrics) -> None:
    """When Redis does not answer, the poll is retried with backoff until it works or the loop is stopped."""
    nowhere = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    source = CelerySource(queue=unique_name, client=nowhere)
    consumer = consumer_for(source, retry_backoff=0.01, retry_backoff_max=0.05)
    threading.Timer(0.5, consumer.stop).start()
    assert consumer.run_once() == 0
    assert recording_metrics.total(INGESTION_RETRIES) >= 2
