"""Session recordings of a host that has no ``posthog_sessionrecordingevent`` (today's PostHog).

Such a PostHog keeps recordings in ClickHouse only, so the Postgres sink
hands them here: they are produced to ``clickhouse_session_recording_events``
(key: the event uuid) and delivered before the sink returns, so the batch is
acknowledged only once Kafka has them. A delivery failure raises
:class:`~plugin_server.exceptions.RetriableError` (the batch is retried; a
re-sent recording has the same uuid, which ClickHouse's table collapses).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from plugin_server.clickhouse.messages import SESSION_RECORDING_EVENTS_TOPIC, recording_value
from plugin_server.exceptions import RetriableError
from plugin_server.sinks.base import PreparedRecording

# Seconds the sink waits for Kafka to confirm a batch of recordings.
DELIVERY_TIMEOUT = 30.0


class KafkaRecordings:
    """Produces recordings and waits for their delivery; the producer is made on first use."""

    def __init__(self, topic: str = SESSION_RECORDING_EVENTS_TOPIC) -> None:
        self.topic = topic
        self._producer: Any = None
        self._lock = threading.Lock()

    def _get_producer(self) -> Any:
        with self._lock:
            if self._producer is None:
                from confluent_kafka import Producer

                from plugin_server.plugins.meta.producer import producer_settings

                self._producer = Producer(producer_settings())
            return self._producer

    def write(self, recordings: Sequence[PreparedRecording]) -> None:
        producer = self._get_producer()
        failures: list[str] = []

        def delivered(error: Any, message: Any) -> None:
            if error is not None:
                failures.append(str(error))

        for recording in recordings:
            producer.produce(self.topic, key=recording.uuid, value=recording_value(recording), on_delivery=delivered)
        undelivered = int(producer.flush(DELIVERY_TIMEOUT))
        if undelivered or failures:
            raise RetriableError(
                f"{undelivered + len(failures)} of {len(recordings)} recordings not delivered to {self.topic}: {failures[:1]}"
            )
