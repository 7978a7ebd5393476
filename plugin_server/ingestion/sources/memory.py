"""An in-memory partitioned source: the third implementation of the Source contract (tests).

A :class:`~.stream.StreamSource` over sentry-arroyo's ``LocalBroker``, the
in-memory broker arroyo tests itself with: topics with partitions, one
consumer per group, committed offsets kept by the broker. Messages are read
like Kafka's (:func:`~plugin_server.ingestion.decode_kafka.decode_kafka_message`)
and keyed to partitions the same way, so a test can run the Kafka
pipeline's whole consumer loop without a broker.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from arroyo.backends.abstract import Consumer as ArroyoConsumer
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.backends.local.storages.memory import MemoryMessageStorage
from arroyo.types import Partition, Topic

from plugin_server.events import SourceName
from plugin_server.ingestion.sources.attempts import AttemptCounter
from plugin_server.ingestion.sources.stream import StreamSource


class MemoryBroker:
    """One arroyo LocalBroker with a helper to publish keyed messages."""

    def __init__(self) -> None:
        self.local: LocalBroker[KafkaPayload] = LocalBroker(MemoryMessageStorage())
        self._partitions: dict[str, int] = {}

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        self.local.create_topic(Topic(topic), partitions)
        self._partitions[topic] = partitions

    def publish(self, topic: str, payload: bytes, key: str | None = None) -> None:
        if topic not in self._partitions:
            self.create_topic(topic)
        count = self._partitions[topic]
        index = zlib.crc32(key.encode()) % count if key is not None else 0
        self.local.produce(Partition(Topic(topic), index), KafkaPayload(key.encode() if key else None, payload, []))


class MemorySource(StreamSource):
    """Consumes one topic of a :class:`MemoryBroker` in a group."""

    name = SourceName.MEMORY

    def __init__(self, broker: MemoryBroker, topic: str, group: str = "memory-ingestion", **options: object) -> None:
        self.broker = broker
        self.group = group
        if topic not in broker._partitions:
            broker.create_topic(topic)
        super().__init__(topic, self._make_consumer, AttemptCounter(f"memory-{group}"), **options)  # type: ignore[arg-type]

    def _make_consumer(self) -> ArroyoConsumer[KafkaPayload]:
        return self.broker.local.get_consumer(self.group)

    def _publish(self, messages: Sequence[tuple[str, str | None, bytes]]) -> None:
        for topic, key, payload in messages:
            self.broker.publish(topic, payload, key)
