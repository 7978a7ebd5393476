"""The Kafka producer of the meta host (Kafka pipeline only).

``posthog.capture`` produces to ``KAFKA_CONSUMPTION_TOPIC`` and the plugin
log writer to ``plugin_log_entries``. Both go
through the process's one :class:`~plugin_server.sinks.kafka_producer.BatchingProducer`
(the original's batching rules), made on first use, so the consumer's
flush before it commits a batch covers the captures and log entries that
batch's plugins produced too.
"""

from __future__ import annotations

from plugin_server.exceptions import RetriableError
from plugin_server.sinks.kafka_producer import existing_producer, shared_producer


class MetaProducer:
    """Queues messages on the shared batching producer; thread-safe."""

    def produce(self, topic: str, key: str, value: bytes) -> None:
        """Queue one message; it is sent by the batching rules (raises KafkaException on a producer error)."""
        shared_producer().queue(topic, key, value)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for queued messages; returns 0 when all were delivered, 1 otherwise."""
        producer = existing_producer()
        if producer is None:  # nothing was ever produced (the Postgres pipeline)
            return 0
        try:
            producer.flush(timeout)
        except RetriableError:
            return 1
        return 0
