"""acceptance.md "Event processing" lines, sent the way PostHog sends them: Celery tasks on the queue.

tests/ingestion/test_process_event.py checks each line on the Ingester with
events shaped like the decoder's output. These send the real
``process_event_with_plugins`` task (7 positional args) through the
CelerySource, the decoder and the Consumer, so that the decoder and the
ingester agree on every value that matters: what is stored, and what the
bad events leave in the dead letters with the original's message.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.sources.celery import CelerySource
from plugin_server.models import DeadLetter, Event, Team
from tests.factories import create_team
from tests.ingestion.celery_tasks import celery_app, send_event_task, task_args

pytestmark = [pytest.mark.redis, pytest.mark.django_db]

FAST = {"poll_timeout": 0.0, "retry_backoff": 0.0, "retry_backoff_max": 0.0, "batch_size": 10}


@pytest.fixture
def consumer(unique_name: str) -> Iterator[Consumer]:
    source = CelerySource(queue=unique_name)
    source.start()
    yield Consumer(source, Ingester(), pool=None, options=ConsumerOptions.from_settings(**FAST))
    source.close()


def send_and_drain(consumer: Consumer, queue: str, *tasks: list[Any]) -> None:
    with celery_app() as app:
        for args in tasks:
            send_event_task(app, queue, args)
    for _ in range(20):
        if consumer.run_once() == 0:
            return
    raise AssertionError("the queue did not drain")


@pytest.fixture
def team() -> Team:
    return create_team(ingested_event=True, anonymize_ips=False)


@pytest.mark.parametrize(
    ("ip", "properties", "expected"),
    [(None, {}, None), ("11.12.13.14", {}, "11.12.13.14"), ("11.12.13.14", {"$ip": "1.0.0.1"}, "1.0.0.1")],
    ids=["ip none", "ip capture", "ip override"],
)
def test_ip(consumer: Consumer, unique_name: str, team: Team, ip: str | None, properties: dict[str, Any], expected: str | None) -> None:
    """$ip is the task's ip unless the client sent its own; no ip, no $ip key."""
    send_and_drain(consumer, unique_name, task_args({"event": "$pageview", "properties": properties}, ip=ip, team_id=team.id))
    stored = Event.objects.get(team=team).properties
    assert stored.get("$ip") == expected and ("$ip" in stored) == (expected is not None)


def test_distinct_id_number_and_json_event_names(consumer: Consumer, unique_name: str, team: Team) -> None:
    """A numeric distinct id is stored as text; object and list names as compact JSON; long names cut to 200."""
    send_and_drain(
        consumer,
        unique_name,
        task_args({"event": "numbered", "properties": {}}, distinct_id=12345, team_id=team.id),
        task_args({"event": {"event name": "as object"}, "properties": {}}, team_id=team.id),
        task_args({"event": ["event name", "a list"], "properties": {}}, team_id=team.id),
        task_args({"event": "E" * 300, "properties": {}}, team_id=team.id),
    )
    assert Event.objects.get(team=team, event="numbered").distinct_id == "12345"
    names = set(Event.objects.filter(team=team).values_list("event", flat=True))
    assert names == {"numbered", '{"event name":"as object"}', '["event name","a list"]', "E" * 200}


def test_offset_timestamp(consumer: Consumer, unique_name: str, team: Team) -> None:
    """now 2020-01-01T12:00:05.200Z, sent_at = now, offset 150 → stored at 12:00:05.050."""
    now = "2020-01-01T12:00:05.200Z"
    send_and_drain(consumer, unique_name, task_args({"event": "$autocapture", "offset": 150, "properties": {}}, now=now, sent_at=now, team_id=team.id))
    assert Event.objects.get(team=team).timestamp == datetime(2020, 1, 1, 12, 0, 5, 50_000, tzinfo=timezone.utc)


def test_bad_team_and_bad_uuid_are_dead_lettered_with_the_original_messages(consumer: Consumer, unique_name: str, team: Team) -> None:
    """Team 1337 and uuid "this is not an uuid" are not stored; their dead letters carry the original's messages."""
    send_and_drain(
        consumer,
        unique_name,
        task_args({"event": "$pageview", "properties": {}}, team_id=1337),
        task_args({"event": "E", "uuid": "this is not an uuid", "properties": {}}, team_id=team.id),
        task_args({"event": "fine", "properties": {}}, team_id=team.id),
    )
    assert list(Event.objects.values_list("event", flat=True)) == ["fine"]
    letters = dict(DeadLetter.objects.filter(queue=unique_name).values_list("reason", "error"))
    assert letters == {
        "unknown_team": "No team found with ID 1337. Can't ingest event.",
        "invalid_uuid": 'Not a valid UUID: "this is not an uuid"',
    }
