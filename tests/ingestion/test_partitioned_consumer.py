"""The consumer loop over a partitioned source and a sink outside Postgres (the in-memory pair, arroyo's LocalBroker).

The Kafka pipeline's rule, without a broker: an offset is committed only
after the sink said the batch is durable; a batch whose sink failed is
delivered again and completed (its events stored once, its persons once).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from plugin_server.ingestion.decode_kafka import partition_key
from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.sources.memory import MemoryBroker, MemorySource
from plugin_server.models import Person, Team
from plugin_server.sinks.memory import MemorySink
from tests.factories import create_team
from tests.kafka_helpers import capture_message

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

NOW = datetime(2021, 5, 17, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def team() -> Team:
    return create_team(ingested_event=True)


def consumer_of(source: MemorySource, sink: MemorySink) -> Consumer:
    ingester = Ingester(sink=sink, persons=PersonManager(lru_size=1000), clock=lambda: NOW, max_event_bytes=100_000)
    options = ConsumerOptions.from_settings(batch_size=100, poll_timeout=0.2, retry_backoff=0.01, retry_backoff_max=0.05)
    return Consumer(source, ingester, None, options=options)


def publish(broker: MemoryBroker, topic: str, messages: list[dict[str, Any]]) -> None:
    for message in messages:
        broker.publish(topic, json.dumps(message).encode(), partition_key(message))


def test_offsets_are_committed_only_once_the_sink_made_the_batch_durable(team: Team, unique_name: str) -> None:
    broker = MemoryBroker()
    broker.create_topic(unique_name, 2)
    messages = [capture_message(team.id, f"user-{index % 3}", properties={"$increment": {"n": 1}}) for index in range(9)]
    publish(broker, unique_name, messages)
    sink = MemorySink()
    sink.fail_flushes = 2  # the broker does not acknowledge twice: the loop retries, Postgres already committed
    source = MemorySource(broker, unique_name, group=unique_name, commit_interval=0)
    consumer = consumer_of(source, sink)
    assert consumer.run_once() == 9
    assert source.poll(10, 0) == []  # commits what the first batch acknowledged
    assert sum(source.committed.values()) == 9
    assert set(sink.events) == {message["uuid"] for message in messages}
    # Each person incremented once per event, not once per attempt.
    assert sorted(person.properties["n"] for person in Person.objects.filter(team_id=team.id)) == [3, 3, 3]
    source.close()


def test_nothing_is_committed_when_the_batch_never_became_durable(team: Team, unique_name: str) -> None:
    """The loop is stopped while the sink keeps failing: the next consumer of the group gets the whole batch."""
    broker = MemoryBroker()
    broker.create_topic(unique_name, 1)
    messages = [capture_message(team.id, "someone") for _ in range(5)]
    publish(broker, unique_name, messages)
    failing = MemorySink()
    failing.fail_flushes = 10**6
    source = MemorySource(broker, unique_name, group=unique_name, commit_interval=0)
    consumer = consumer_of(source, failing)
    consumer.options = ConsumerOptions.from_settings(batch_size=100, poll_timeout=0.2, retry_attempts=10**6, retry_backoff=0.01)
    import threading

    threading.Timer(0.5, consumer.stop).start()
    consumer.run_once()
    source.close()
    assert source.committed == {}
    sink = MemorySink()
    again = MemorySource(broker, unique_name, group=unique_name, commit_interval=0)
    assert consumer_of(again, sink).run_once() == 5
    assert set(sink.events) == {message["uuid"] for message in messages}
    again.close()
