"""Poison pills with the real Celery source, consumer, Postgres and Redis.

A consumer "dies" here the way a SIGKILL leaves it (its heartbeat key gone,
nothing closed, nothing acknowledged); the kill/restart loop of a real
server is in tests/e2e/test_poison_e2e.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.decode import decode
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.sources.celery import CelerySource
from plugin_server.models import DeadLetter, Event
from tests.factories import create_team
from tests.ingestion.celery_tasks import celery_app, die, send_event_task, task_args

pytestmark = [pytest.mark.redis, pytest.mark.django_db]

FAST = {"poll_timeout": 0.0, "retry_backoff": 0.0, "retry_backoff_max": 0.0, "max_message_bytes": 1_000_000}


@pytest.fixture
def sources() -> Iterator[list[CelerySource]]:
    made: list[CelerySource] = []
    yield made
    for source in made:
        if not source.heartbeat.stopping:
            source.close()


def started(sources: list[CelerySource], queue: str) -> CelerySource:
    source = CelerySource(queue=queue)
    source.start()
    sources.append(source)
    return source


def test_a_message_the_process_keeps_dying_with_is_dead_lettered_as_poison_and_nothing_else_is_lost(
    sources: list[CelerySource], unique_name: str, redis_client: redis.Redis
) -> None:
    """Three deaths holding P: P is dead-lettered as poison unprocessed (with the stage noted before the
    last death); its neighbours, re-delivered alone, are stored exactly once."""
    team = create_team()
    with celery_app() as app:
        for name in ("a", "P", "b"):
            send_event_task(app, unique_name, task_args({"event": name, "properties": {}}, distinct_id=name, team_id=team.id))
    options = ConsumerOptions.from_settings(**FAST, poison_max_attempts=3)

    # Delivery 1: the whole batch is in hand when the process dies.
    first = started(sources, unique_name)
    assert len(first.poll(10, timeout=0)) == 3
    die(first)

    # Delivery 2: each comes back alone; a is stored, then the process dies holding P.
    second = started(sources, unique_name)
    consumer = Consumer(second, Ingester(), pool=None, options=options)
    assert consumer.run_once() == 1
    [suspect] = second.poll(10, timeout=0)
    assert (decode(suspect, 10**6)["event"], suspect.attempts) == ("P", 2)
    die(second)

    # Delivery 3: P alone again; the consumer notes the step it enters, then dies.
    third = started(sources, unique_name)
    [suspect] = third.poll(10, timeout=0)
    assert suspect.attempts == 3
    Consumer(third, Ingester(), pool=None, options=options).notes.note([suspect], "plugins")
    die(third)

    # Delivery 4: over the limit: dead-lettered without being processed; b goes on.
    fourth = started(sources, unique_name)
    consumer = Consumer(fourth, Ingester(), pool=None, options=options)
    assert consumer.run_once() == 1
    assert consumer.run_once() == 1
    assert consumer.run_once() == 0
    letter = DeadLetter.objects.get(queue=unique_name)
    assert letter.reason == "poison"
    assert "delivered 4 times" in letter.error and "handing the event to the plugin workers (delivery 3)" in letter.error
    assert decode(suspect.__class__(payload=bytes(letter.payload), token=0, queue=unique_name), 10**6)["event"] == "P"
    assert sorted(Event.objects.filter(team=team).values_list("event", flat=True)) == ["a", "b"]
    assert fourth.in_flight() == 0
    assert redis_client.hlen(f"@posthog-plugin-server/celery/{unique_name}/attempts") == 0
    assert not redis_client.keys(f"@posthog-plugin-server/poison/celery/{unique_name}/*")
