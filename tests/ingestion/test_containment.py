"""Whatever one message holds, the worst outcome is that message dead-lettered with its reason.

Each class of input that crashed the server (issue: poison messages) goes
through the real Celery source, consumer, ingester, Postgres and Redis.
"""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import pytest
import redis

from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.decode_kafka import decode_kafka_message
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.sources.celery import CelerySource
from plugin_server.models import DeadLetter, Event, Person, PersonDistinctId, SessionRecordingEvent
from tests.factories import create_team
from tests.ingestion.celery_tasks import celery_app, send_event_task, task_args
from tests.ingestion.hostile import deep_event_messages, deep_json, raw_envelope, task_body_text

pytestmark = [pytest.mark.redis, pytest.mark.django_db]

OPTIONS = {"poll_timeout": 0.0, "retry_backoff": 0.0, "retry_backoff_max": 0.0, "max_message_bytes": 1_000_000, "max_event_depth": 100}


def drain(source: CelerySource) -> Consumer:
    consumer = Consumer(source, Ingester(), pool=None, options=ConsumerOptions.from_settings(**OPTIONS))
    for _ in range(100):
        if consumer.run_once() == 0:
            assert source.in_flight() == 0
            return consumer
    raise AssertionError("the queue did not drain")


def send(queue: str, *arg_lists: list[Any]) -> None:
    with celery_app() as app:
        for args in arg_lists:
            send_event_task(app, queue, args)


@pytest.mark.parametrize("levels", [10_000, 500, 101])
def test_json_nested_too_deep_anywhere_is_dead_lettered_as_too_deep(
    source: CelerySource, unique_name: str, redis_client: redis.Redis, levels: int
) -> None:
    """10,000 (json recursed), 500 (pickle for the workers recursed) or 101 levels, in properties, the event
    name, $set or the envelope: too_deep, no RecursionError; the good event beside them is stored."""
    team = create_team()
    for payload in deep_event_messages(team.id, levels).values():
        redis_client.lpush(unique_name, payload)
    send(unique_name, task_args({"event": "good", "properties": {}}, team_id=team.id))
    drain(source)
    assert sorted(DeadLetter.objects.filter(queue=unique_name).values_list("reason", flat=True)) == ["too_deep"] * 4
    assert list(Event.objects.filter(team=team).values_list("event", flat=True)) == ["good"]


def test_an_event_at_the_depth_limit_is_stored(source: CelerySource, unique_name: str, redis_client: redis.Redis) -> None:
    """Nested exactly MAX_EVENT_DEPTH levels (the event object, its properties, 98 arrays): stored as sent."""
    team = create_team()
    redis_client.lpush(unique_name, raw_envelope(task_body_text(f'{{"event": "deep", "properties": {{"x": {deep_json(98)}}}}}', str(team.id))))
    drain(source)
    assert not DeadLetter.objects.filter(queue=unique_name).exists()
    stored = Event.objects.get(team=team).properties["x"]
    for _ in range(97):
        stored = stored[0]
    assert stored == [1]


@pytest.mark.parametrize("team_id", [2**31, 2**70, -(2**63) - 1])
def test_a_team_id_out_of_the_columns_range_is_dead_lettered_and_the_letter_fits(
    source: CelerySource, unique_name: str, team_id: int
) -> None:
    """invalid_team_id; the letter's team_id column is NULL and its error names the value."""
    send(unique_name, task_args({"event": "e", "properties": {}}, team_id=team_id))
    drain(source)
    letter = DeadLetter.objects.get(queue=unique_name)
    assert (letter.reason, letter.team_id) == ("invalid_team_id", None)
    assert str(team_id) in letter.error


def test_a_compressed_bomb_is_refused_before_it_inflates(source: CelerySource, unique_name: str, redis_client: redis.Redis) -> None:
    """A 100 MB body compressed into ~100 KB is too_large, having inflated no further than the limit."""
    body_text = task_body_text('{"event": "bomb", "properties": {"x": "' + "a" * 100_000_000 + '"}}', "2")
    compressed = zlib.compress(body_text.encode(), 9)
    redis_client.lpush(unique_name, raw_envelope("", compression="application/x-gzip", body=compressed))
    drain(source)
    assert DeadLetter.objects.get(queue=unique_name).reason == "too_large"


@pytest.mark.parametrize(
    ("sent", "stored"),
    [(True, "true"), (False, "false"), (3.0, "3"), (1e21, "1e+21"), (1e-7, "1e-7"), (-0.0, "0"), (2**64, "18446744073709552000"), (0.1, "0.1")],
)
def test_distinct_id_is_made_text_as_javascripts_string_does(source: CelerySource, unique_name: str, sent: Any, stored: str) -> None:
    """The original's String(): distinct_id true → 'true', 3.0 → '3' (Python would give 'True', '3.0')."""
    team = create_team()
    send(unique_name, task_args({"event": "e", "properties": {"$set": {"a": 1}}}, distinct_id=sent, team_id=team.id))
    drain(source)
    assert list(Event.objects.filter(team=team).values_list("distinct_id", flat=True)) == [stored]
    assert list(PersonDistinctId.objects.filter(team=team).values_list("distinct_id", flat=True)) == [stored]
    assert Person.objects.filter(team=team).count() == 1


def test_nan_and_infinity_distinct_ids_and_event_names_as_javascript_writes_them(
    source: CelerySource, unique_name: str, redis_client: redis.Redis
) -> None:
    """NaN → 'NaN'; an event name 3.0 → '3', {"a": 1.0, "2": true} → '{"2":true,"a":1}' (JSON.stringify)."""
    team = create_team()
    redis_client.lpush(unique_name, raw_envelope(task_body_text('{"event": 3.0}', str(team.id), distinct_id_text="NaN")))
    redis_client.lpush(unique_name, raw_envelope(task_body_text('{"event": {"a": 1.0, "2": true}}', str(team.id), distinct_id_text="-Infinity")))
    drain(source)
    assert sorted(Event.objects.filter(team=team).values_list("distinct_id", "event")) == [("-Infinity", '{"2":true,"a":1}'), ("NaN", "3")]


def test_a_session_id_is_made_text_as_javascript_does(source: CelerySource, unique_name: str) -> None:
    """$snapshot with $session_id 5.0 is recorded under session '5'."""
    team = create_team()
    send(unique_name, task_args({"event": "$snapshot", "properties": {"$session_id": 5.0, "$snapshot_data": {}}}, team_id=team.id))
    drain(source)
    assert list(SessionRecordingEvent.objects.filter(team=team).values_list("session_id", flat=True)) == ["5"]


def test_a_uuid_another_team_stored_is_stored_for_this_team_too(source: CelerySource, unique_name: str) -> None:
    """Team B's event reusing team A's uuid is stored (it was skipped as a duplicate and lost)."""
    team_a, team_b = create_team(), create_team()
    shared = "017a0b2c-0000-4000-8000-000000000001"
    send(unique_name, task_args({"event": "a", "uuid": shared, "properties": {}}, team_id=team_a.id))
    drain(source)
    send(unique_name, task_args({"event": "b", "uuid": shared, "properties": {}}, team_id=team_b.id))
    drain(source)
    assert [Event.objects.filter(team=team).count() for team in (team_a, team_b)] == [1, 1]
    assert not DeadLetter.objects.filter(queue=unique_name).exists()


def test_a_letter_whose_fields_cannot_be_stored_keeps_its_raw_bytes(source: CelerySource, unique_name: str, redis_client: redis.Redis) -> None:
    """Invalid UTF-8, NUL and lone surrogates anywhere: every message is kept, byte for byte."""
    payloads = [b"\x00\xff\xfe not an envelope \x00", '{"body": "\ud800"}'.encode("utf-8", "surrogatepass"), b"[" * 20 + b"\x00"]
    for payload in payloads:
        redis_client.lpush(unique_name, payload)
    drain(source)
    assert sorted(bytes(letter.payload) for letter in DeadLetter.objects.filter(queue=unique_name)) == sorted(payloads)


def test_a_base64_body_that_is_a_json_bomb_of_brackets_is_contained(source: CelerySource, unique_name: str, redis_client: redis.Redis) -> None:
    """A body of 500,000 unclosed brackets is too_deep (checked without parsing it)."""
    body = base64.b64encode(b"[" * 500_000).decode()
    envelope = json.loads(raw_envelope("[]"))
    envelope["body"] = body
    redis_client.lpush(unique_name, json.dumps(envelope).encode())
    drain(source)
    assert DeadLetter.objects.get(queue=unique_name).reason == "too_deep"


def test_element_integers_out_of_their_columns_range_are_left_out_and_the_event_stored(source: CelerySource, unique_name: str) -> None:
    """nth_child 2**70 or a 5,000-digit text (int columns): stored as null, the event and its element kept."""
    team = create_team()
    elements = [{"tag_name": "a", "nth_child": 2**70, "nth_of_type": "9" * 5000, "attr_class": ["x"]}]
    send(unique_name, task_args({"event": "$autocapture", "properties": {"$elements": elements}}, team_id=team.id))
    drain(source)
    assert not DeadLetter.objects.filter(queue=unique_name).exists()
    [element] = Event.objects.get(team=team).elements
    assert (element["tag_name"], element.get("nth_child"), element.get("nth_of_type")) == ("a", None, None)


@pytest.mark.parametrize(("sent", "stored"), [(True, "true"), (3.0, "3"), (1e21, "1e+21"), ("a", "a")])
def test_the_kafka_pipeline_makes_distinct_ids_text_as_javascript_does(sent: Any, stored: str) -> None:
    """The Kafka message's distinct_id goes through the same String() as the Celery task's."""
    message = {"uuid": "017a0b2c-0000-4000-8000-000000000002", "distinct_id": sent, "ip": "", "site_url": "",
               "data": json.dumps({"event": "e", "properties": {}}), "team_id": 2, "now": "2021-01-01T00:00:00Z", "sent_at": ""}
    assert decode_kafka_message(json.dumps(message).encode(), 10**6)["distinct_id"] == stored
