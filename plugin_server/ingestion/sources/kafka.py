"""The Kafka source: ``KAFKA_CONSUMPTION_TOPIC`` in the consumer group ``clickhouse-ingestion``.

A :class:`~.stream.StreamSource` over sentry-arroyo's ``KafkaConsumer``
(confluent-kafka underneath) with the settings of
:func:`plugin_server.kafka_client.consumer_settings`: brokers from
``KAFKA_HOSTS``, the client id, TLS only with all three certificates, read
committed, offsets committed by hand after the batch is durable. Messages
are decoded by :func:`~plugin_server.ingestion.decode_kafka.decode_kafka_message`;
a replayed dead letter is produced back to its topic, keyed by person
(:func:`~plugin_server.ingestion.decode_kafka.person_partition_key`) like
every message on the consumption topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arroyo.backends.abstract import Consumer as ArroyoConsumer
from arroyo.backends.kafka import KafkaConsumer, KafkaPayload

from plugin_server.config import get_config
from plugin_server.events import SourceName
from plugin_server.exceptions import RetriableError
from plugin_server.ingestion.sources.attempts import AttemptCounter
from plugin_server.ingestion.sources.stream import StreamSource
from plugin_server.kafka_client import CONSUMER_GROUP, consumer_settings, producer_settings


class KafkaSource(StreamSource):
    """Consumes the ingestion topic in a consumer group shared by every server."""

    name = SourceName.KAFKA

    def __init__(self, topic: str | None = None, group: str | None = None, *, overrides: dict[str, Any] | None = None, **options: Any) -> None:
        self.group = group or get_config().kafka_consumer_group or CONSUMER_GROUP
        self._overrides = overrides or {}
        super().__init__(topic or get_config().kafka_consumption_topic or "", self._make_consumer, AttemptCounter(self.group), **options)

    def _make_consumer(self) -> ArroyoConsumer[KafkaPayload]:
        return KafkaConsumer(consumer_settings(self.group, **self._overrides))

    def _publish(self, messages: Sequence[tuple[str, str | None, bytes]]) -> None:
        from confluent_kafka import KafkaException, Producer

        errors: list[str] = []

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                errors.append(str(error))

        producer = Producer(producer_settings())
        try:
            for topic, key, payload in messages:
                producer.produce(topic, value=payload, key=key, on_delivery=delivered)
            remaining = producer.flush(30)
        except KafkaException as error:
            raise RetriableError(f"Kafka refused the replay: {error}") from error
        if errors or remaining:
            raise RetriableError(f"Kafka did not take {len(errors) + remaining} replayed messages: {errors[:1]}")
