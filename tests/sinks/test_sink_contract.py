"""The Sink contract, run by every sink: Postgres, Kafka (real broker) and in memory.

Through the Ingester, as the consumer drives them: after ``ingest`` returns
the batch is durable and its read model shows every event once, the
recordings, and the persons and distinct ids Postgres holds; a re-delivered
batch changes nothing; a batch whose sink failed after the Postgres commit
is complete once delivered again (the ``replayed`` path).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
from confluent_kafka import Producer

from plugin_server.exceptions import RetriableError
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.models import Person, PersonDistinctId, Team
from plugin_server.sinks.base import Sink
from plugin_server.sinks.kafka import KafkaSink
from plugin_server.sinks.kafka_producer import BatchingProducer
from plugin_server.sinks.memory import MemorySink
from plugin_server.sinks.postgres import PostgresSink
from tests.factories import create_team
from tests.sinks.sink_readers import ReadModel, kafka_read_model, memory_read_model, postgres_read_model

pytestmark = pytest.mark.django_db(transaction=True)

NOW = datetime(2021, 5, 17, 10, 0, tzinfo=timezone.utc)


@dataclass
class SinkUnderTest:
    make: Callable[[], Sink]  # a working sink (the same store every time)
    make_broken: Callable[[], Sink]  # one whose store loses what it is given after the Postgres commit
    read: Callable[[], ReadModel]


def _producer(bootstrap: str, **overrides: Any) -> BatchingProducer:
    settings = {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.timeout.ms": 10_000, **overrides}
    return BatchingProducer(Producer(settings), max_queue_size=1000, max_batch_bytes=900_000, flush_frequency_ms=500, flush_timeout=15)


@pytest.fixture(params=["postgres", "kafka", "memory"])
def under_test(request: pytest.FixtureRequest) -> Iterator[SinkUnderTest]:
    kind = request.param
    if kind == "postgres":
        # Durable at the commit: nothing can be lost after it, the "broken" one is a plain one.
        yield SinkUnderTest(PostgresSink, PostgresSink, postgres_read_model)
    elif kind == "memory":
        memory = MemorySink()

        def broken_memory() -> Sink:
            memory.fail_flushes = 1
            return memory

        yield SinkUnderTest(lambda: memory, broken_memory, lambda: memory_read_model(memory))
    else:
        request.applymarker(pytest.mark.kafka)
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        prefix = f"{request.getfixturevalue('unique_name')}-"
        good = KafkaSink(_producer(bootstrap), topic_prefix=prefix)
        # Nothing listens on port 1: every message times out, the flush raises.
        broken = KafkaSink(_producer("127.0.0.1:1", **{"message.timeout.ms": 1500}), topic_prefix=prefix)
        yield SinkUnderTest(lambda: good, lambda: broken, lambda: kafka_read_model(bootstrap, good))


@pytest.fixture
def team() -> Team:
    return create_team(ingested_event=True)


def event_of(team: Team, distinct_id: str, name: str = "$pageview", **properties: Any) -> dict[str, Any]:
    event_uuid = str(uuidt())
    return {
        "event": name,
        "distinct_id": distinct_id,
        "team_id": team.id,
        "uuid": event_uuid,
        "now": NOW.isoformat(),
        "sent_at": None,
        "properties": {"test_uuid": event_uuid, **properties},
    }


def ingester(sink: Sink) -> Ingester:
    return Ingester(sink=sink, persons=PersonManager(lru_size=10_000), clock=lambda: NOW, max_event_bytes=100_000)


def a_batch(team: Team) -> list[dict[str, Any]]:
    session = uuid.uuid4().hex
    return [
        event_of(team, "anon", **{"$set": {"plan": "free"}}),
        event_of(team, "alice", "$identify", **{"$anon_distinct_id": "anon", "$set": {"email": "a@example.com"}}),
        event_of(team, "bob", "signed up", **{"$set_once": {"first": True}}),
        event_of(team, "bob", "$snapshot", **{"$session_id": session, "$snapshot_data": {"type": 2}}),
    ]


def postgres_persons(team: Team) -> tuple[dict[str, dict[str, Any]], dict[tuple[int, str], str]]:
    persons = {str(person.uuid): person.properties for person in Person.objects.filter(team_id=team.id)}
    distinct_ids = {
        (row.team_id, row.distinct_id): str(row.person.uuid) for row in PersonDistinctId.objects.filter(team_id=team.id).select_related("person")
    }
    return persons, distinct_ids


def assert_read_model_matches(model: ReadModel, team: Team, events: list[dict[str, Any]]) -> None:
    regular = [event for event in events if event["event"] != "$snapshot"]
    assert set(model.events) == {event["uuid"] for event in regular}
    for event in regular:
        row = model.events[event["uuid"]]
        assert (row["event"], row["distinct_id"], row["team_id"]) == (event["event"], event["distinct_id"], team.id)
        assert row["properties"]["test_uuid"] == event["uuid"]
    assert [row["session_id"] for row in model.recordings.values()] == [
        event["properties"]["$session_id"] for event in events if event["event"] == "$snapshot"
    ]
    persons, distinct_ids = postgres_persons(team)
    assert model.distinct_ids == distinct_ids
    assert {person: model.persons[person] for person in persons} == persons


def test_a_batch_is_durable_and_readable_when_ingest_returns(under_test: SinkUnderTest, team: Team) -> None:
    """Every event once, the recording, and the persons and distinct ids exactly as Postgres holds them."""
    events = a_batch(team)
    result = ingester(under_test.make()).ingest(events)
    assert sorted(result.stored) == sorted(event["uuid"] for event in events)
    model = under_test.read()
    assert_read_model_matches(model, team, events)
    persons, distinct_ids = postgres_persons(team)
    assert distinct_ids[(team.id, "anon")] == distinct_ids[(team.id, "alice")]  # the identify aliased them
    assert persons[distinct_ids[(team.id, "alice")]] == {"plan": "free", "email": "a@example.com"}


def test_a_redelivered_batch_changes_nothing(under_test: SinkUnderTest, team: Team) -> None:
    """The same batch twice: the read model shows each event once; persons are applied once."""
    events = a_batch(team)
    events.append(event_of(team, "carol", **{"$increment": {"visits": 1}}))
    first = ingester(under_test.make()).ingest(events)
    second = ingester(under_test.make()).ingest(events)
    assert sorted(second.duplicates) == sorted(first.stored)
    model = under_test.read()
    assert_read_model_matches(model, team, events)
    persons, distinct_ids = postgres_persons(team)
    assert persons[distinct_ids[(team.id, "carol")]] == {"visits": 1}


def test_a_batch_lost_after_the_commit_is_complete_once_delivered_again(under_test: SinkUnderTest, team: Team) -> None:
    """The sink fails to make a batch durable (the consumer does not acknowledge it); the re-delivery completes it."""
    events = a_batch(team)
    try:
        ingester(under_test.make_broken()).ingest(events)
    except RetriableError:
        pass  # a non-transactional sink: Postgres committed, the sink's store did not get the batch
    ingester(under_test.make()).ingest(events)
    assert_read_model_matches(under_test.read(), team, events)
