"""Session recordings of a host that has no ``posthog_sessionrecordingevent`` (today's PostHog).

Such a PostHog keeps recordings in ClickHouse only, so the Postgres sink
hands them here: they are produced to ``clickhouse_session_recording_events``
(key: the event uuid) and delivered before the sink returns, so the batch is
acknowledged only once Kafka has them. A delivery failure raises
:class:`~plugin_server.exceptions.RetriableError` (the batch is retried; a
re-sent recording has the same uuid, which ClickHouse's table collapses).
"""

from __future__ import annotations

from collections.abc import Sequence

from plugin_server.clickhouse.messages import SESSION_RECORDING_EVENTS_TOPIC, recording_value
from plugin_server.kafka_client import topic_name
from plugin_server.sinks.base import PreparedRecording
from plugin_server.sinks.kafka_producer import shared_producer

class KafkaRecordings:
    """Produces recordings on the process's batching producer and waits for their delivery."""

    def __init__(self, topic: str | None = None) -> None:
        self._topic = topic

    @property
    def topic(self) -> str:
        return self._topic or topic_name(SESSION_RECORDING_EVENTS_TOPIC)

    def write(self, recordings: Sequence[PreparedRecording]) -> None:
        producer = shared_producer()
        topic = self.topic
        for recording in recordings:
            producer.queue(topic, recording.uuid, recording_value(recording))
        producer.flush()  # RetriableError unless Kafka acknowledged every one
