"""The Source contract, run by every source: Celery (real Redis), Kafka (real broker) and in memory.

Taking in order, decoding, acknowledging, giving back on close (with the
delivery count taken back), replaying a dead letter, and the counts of the
poison-pill contract. Losing partitions to another consumer is the Kafka
source's own (arroyo's LocalBroker has no group rebalancing): see
``tests/ingestion/test_kafka_source.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from plugin_server.events import Delivery
from plugin_server.exceptions import InvalidMessage
from plugin_server.ingestion.decode_kafka import person_partition_key
from plugin_server.ingestion.sources.base import Source
from plugin_server.ingestion.sources.celery import CelerySource
from plugin_server.ingestion.sources.kafka import KafkaSource
from plugin_server.ingestion.sources.memory import MemoryBroker, MemorySource
from tests.ingestion.celery_tasks import celery_app, send_event_task, task_args
from tests.kafka_helpers import capture_message, create_topic, produce, take

pytestmark = pytest.mark.redis

MAX_BYTES = 10**6


@dataclass
class SourceUnderTest:
    new: Callable[[], Source]  # a started source on the queue (same group)
    put: Callable[[list[str]], None]  # messages of these distinct ids, in this order
    put_raw: Callable[[bytes], None]  # a raw message as a producer could send it
    bad: bytes  # a message that cannot be decoded
    bad_reason: str


@pytest.fixture(params=["celery", "kafka", "memory"])
def under_test(request: pytest.FixtureRequest, unique_name: str) -> Iterator[SourceUnderTest]:
    made: list[Source] = []

    def remember(source: Source) -> Source:
        source.start()
        made.append(source)
        return source

    kind = request.param
    if kind == "celery":

        def put_celery(distinct_ids: list[str]) -> None:
            with celery_app() as app:
                for distinct_id in distinct_ids:
                    send_event_task(app, unique_name, task_args(distinct_id=distinct_id))

        def put_raw_celery(payload: bytes) -> None:
            CelerySource(queue=unique_name).replay([(unique_name, payload)])

        yield SourceUnderTest(
            lambda: remember(CelerySource(queue=unique_name)), put_celery, put_raw_celery, b"{not json", "bad_envelope"
        )
    elif kind == "memory":
        broker = MemoryBroker()
        broker.create_topic(unique_name, 1)

        def put_memory(distinct_ids: list[str]) -> None:
            for distinct_id in distinct_ids:
                broker.publish(unique_name, json.dumps(capture_message(2, distinct_id)).encode(), person_partition_key(2, distinct_id))

        yield SourceUnderTest(
            lambda: remember(MemorySource(broker, unique_name, group=unique_name)),
            put_memory,
            lambda payload: broker.publish(unique_name, payload),
            b"{not json",
            "not_json",
        )
    else:
        request.applymarker(pytest.mark.kafka)
        bootstrap = request.getfixturevalue("kafka_bootstrap")
        request.getfixturevalue("settings").KAFKA_HOSTS = bootstrap
        create_topic(bootstrap, unique_name, 1)
        yield SourceUnderTest(
            lambda: remember(KafkaSource(unique_name, group=unique_name, revoke_wait=2.0)),
            lambda distinct_ids: produce(bootstrap, unique_name, [capture_message(2, d) for d in distinct_ids]),
            lambda payload: produce(bootstrap, unique_name, [payload]),
            b"{not json",
            "not_json",
        )
    for source in made:
        source.close()


def distinct_ids(source: Source, deliveries: list[Delivery]) -> list[Any]:
    return [source.decode(delivery, MAX_BYTES)["distinct_id"] for delivery in deliveries]


def test_poll_hands_out_in_order_and_decode_gives_the_event(under_test: SourceUnderTest) -> None:
    under_test.put(["a", "b", "c"])
    source = under_test.new()
    batch = take(source, 3)
    assert distinct_ids(source, batch) == ["a", "b", "c"]
    assert [delivery.attempts for delivery in batch] == [1, 1, 1]
    # A first delivery's key may be left empty (the contract); those given are distinct.
    keys = [delivery.key for delivery in batch if delivery.key]
    assert len(set(keys)) == len(keys)
    event = source.decode(batch[0], MAX_BYTES)
    assert event["team_id"] == 2 and event["ip"] == "127.0.0.1" and event["uuid"]


def test_acknowledged_messages_are_gone_and_the_rest_come_back_after_close(under_test: SourceUnderTest) -> None:
    """ack forgets; close gives back what was taken and not acknowledged, this hand-out not counted (not a crash)."""
    under_test.put(["a", "b", "c", "d"])
    first = under_test.new()
    batch = take(first, 4)
    first.ack(batch[:2])
    first.close()
    second = under_test.new()
    again = take(second, 2)
    assert distinct_ids(second, again) == ["c", "d"]
    assert [delivery.attempts for delivery in again] == [1, 1]
    second.ack(again)
    assert second.poll(10, timeout=1.0) == []


def test_an_undecodable_message_is_an_invalid_message_with_its_reason(under_test: SourceUnderTest) -> None:
    under_test.put_raw(under_test.bad)
    source = under_test.new()
    (delivery,) = take(source, 1)
    with pytest.raises(InvalidMessage) as error:
        source.decode(delivery, MAX_BYTES)
    assert error.value.reason == under_test.bad_reason
    with pytest.raises(InvalidMessage) as too_large:
        source.decode(delivery, 3)
    assert too_large.value.reason == "too_large"


def test_replay_puts_a_raw_message_back_on_its_queue(under_test: SourceUnderTest) -> None:
    under_test.put(["x"])
    source = under_test.new()
    (delivery,) = take(source, 1)
    source.ack([delivery])
    source.replay([(delivery.queue, delivery.payload)])
    (again,) = take(source, 1)
    assert again.payload == delivery.payload
    assert source.decode(again, MAX_BYTES)["distinct_id"] == "x"
