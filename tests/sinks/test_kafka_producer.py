"""The batching producer against the real broker: the original's four illustrations (spec: ingestion.md §8.1).

"Sent" is checked on the broker: after librdkafka delivered what it was
handed (``flush`` of the inner producer, which does not touch our buffer),
the topic holds exactly the messages sent so far.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from plugin_server.exceptions import RetriableError
from plugin_server.metrics import RecordingMetrics
from plugin_server.sinks.kafka_producer import BatchingProducer
from tests.sinks.sink_readers import read_topic

pytestmark = pytest.mark.kafka


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def batching(bootstrap: str, clock: Clock, **limits: float) -> tuple[BatchingProducer, Producer]:
    inner = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    options = {"max_queue_size": 1000, "max_batch_bytes": 900_000, "flush_frequency_ms": 500.0, **limits}
    return BatchingProducer(inner, clock=clock, **options), inner  # type: ignore[arg-type]


def on_broker(bootstrap: str, inner: Producer, topic: str) -> list[int]:
    """Sizes of the messages the broker holds, once librdkafka delivered what it was handed."""
    assert inner.flush(20) == 0
    return [len(value) for value in read_topic(bootstrap, topic)]


def test_bytes_over_the_limit_send_the_buffer_first(kafka_bootstrap: str, unique_name: str) -> None:
    """1000-byte limit: 700 and 250 stay buffered; 100 more sends the first two and leaves itself (100 bytes)."""
    clock = Clock()
    producer, inner = batching(kafka_bootstrap, clock, max_batch_bytes=1000)
    producer.queue(unique_name, "k", b"a" * 700)
    producer.queue(unique_name, "k", b"b" * 250)
    assert on_broker(kafka_bootstrap, inner, unique_name) == []
    assert [message.size for message in producer.buffered] == [700, 250]
    producer.queue(unique_name, "k", b"c" * 100)
    assert on_broker(kafka_bootstrap, inner, unique_name) == [700, 250]
    assert [message.size for message in producer.buffered] == [100]


def test_the_message_count_limit_sends_everything(kafka_bootstrap: str, unique_name: str) -> None:
    """4-message limit: the 4th message sends all 4."""
    clock = Clock()
    producer, inner = batching(kafka_bootstrap, clock, max_queue_size=4)
    for _ in range(3):
        producer.queue(unique_name, "k", b"x" * 10)
    assert on_broker(kafka_bootstrap, inner, unique_name) == []
    producer.queue(unique_name, "k", b"x" * 10)
    assert on_broker(kafka_bootstrap, inner, unique_name) == [10, 10, 10, 10]
    assert producer.buffered == []


def test_a_message_after_the_flush_frequency_sends_everything(kafka_bootstrap: str, unique_name: str) -> None:
    """20 s frequency: a message arriving 21 s after the last send sends everything buffered including itself."""
    clock = Clock()
    producer, inner = batching(kafka_bootstrap, clock, flush_frequency_ms=20_000)
    producer.queue(unique_name, "k", b"1")
    clock.now += 5
    producer.queue(unique_name, "k", b"22")
    assert on_broker(kafka_bootstrap, inner, unique_name) == []
    clock.now += 16  # 21 s after the last send
    producer.queue(unique_name, "k", b"333")
    assert on_broker(kafka_bootstrap, inner, unique_name) == [1, 2, 3]


def test_a_message_larger_than_the_limit_is_sent_alone_not_dropped(kafka_bootstrap: str, unique_name: str) -> None:
    """The original dropped it; here it goes alone, after what was buffered."""
    clock = Clock()
    producer, inner = batching(kafka_bootstrap, clock, max_batch_bytes=1000)
    producer.queue(unique_name, "k", b"s" * 10)
    producer.queue(unique_name, "k", b"L" * 5000)
    assert on_broker(kafka_bootstrap, inner, unique_name) == [10, 5000]
    assert producer.buffered == []
    producer.queue(unique_name, "k", b"L" * 5000)  # on an empty buffer, too
    assert on_broker(kafka_bootstrap, inner, unique_name) == [10, 5000, 5000]


def test_zero_queue_size_sends_every_message_and_empty_sends_do_nothing(kafka_bootstrap: str, unique_name: str) -> None:
    """KAFKA_PRODUCER_MAX_QUEUE_SIZE=0 (the tests' default): every message at once; a null value counts 4 bytes."""
    clock = Clock()
    producer, inner = batching(kafka_bootstrap, clock, max_queue_size=0)
    producer.send()
    assert producer.sends == 0
    producer.queue(unique_name, "k", None)
    assert producer.sends == 1
    assert on_broker(kafka_bootstrap, inner, unique_name) == [0]


def test_flush_waits_for_the_acknowledgements_and_raises_when_a_message_is_lost(
    kafka_bootstrap: str, unique_name: str, recording_metrics: RecordingMetrics
) -> None:
    clock = Clock()
    producer, _inner = batching(kafka_bootstrap, clock)
    producer.queue(unique_name, "k", b"kept")
    producer.flush()
    assert [len(value) for value in read_topic(kafka_bootstrap, unique_name)] == [4]
    assert recording_metrics.total("query.kafka_send.total") == 1
    nowhere = BatchingProducer(
        Producer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 1000}),
        max_queue_size=1000,
        max_batch_bytes=900_000,
        flush_frequency_ms=500,
    )
    nowhere.queue(unique_name, None, b"lost")
    with pytest.raises(RetriableError, match="did not acknowledge"):
        nowhere.flush(10)
    assert recording_metrics.total("kafka_queue.delivery_failed") == 1
