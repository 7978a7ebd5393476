"""The dead-letter topic of the Kafka pipeline: ``events_dead_letter_queue`` (the later versions' format).

Every dead letter of the Kafka pipeline is kept twice: as a row of the
server's dead-letter table (listed and replayed by ``./manage.py
dead_letters``) and as a message of this topic, which PostHog's ClickHouse
reads into its ``events_dead_letter_queue`` table. The message is JSON
(key: the event uuid when known):

``id`` (new UUIDT), ``event_uuid``, ``event``, ``properties`` (JSON text),
``distinct_id``, ``team_id``, ``elements_chain`` (``""``), ``created_at``,
``ip``, ``site_url``, ``now``, ``raw_payload`` (the message as received),
``error_timestamp`` (``YYYY-MM-DD HH:MM:SS``), ``error_location``
(``plugin_server_ingest_event``, or ``plugin_server_decode`` for a message
that never became an event), ``error`` (``ingestEvent failed. Error:
<message>``) and, beyond the later versions' fields, ``reason`` (the stable
code of docs/ingestion.md) and ``tags`` (``[reason]``).

The letters are queued on the process's batching producer and flushed with
the batch: the consumer commits only once they are acknowledged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from plugin_server.clickhouse.messages import compact_json
from plugin_server.ingestion.decode_kafka import decode_kafka_message
from plugin_server.ingestion.timestamps import format_clickhouse_seconds
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.kafka_client import topic_name
from plugin_server.metrics import KAFKA_DEAD_LETTERED, get_metrics
from plugin_server.sinks.kafka_producer import BatchingProducer, shared_producer

if TYPE_CHECKING:
    from plugin_server.ingestion.dlq import DeadLetterEntry

DEAD_LETTER_TOPIC = "events_dead_letter_queue"
DECODE_REASONS = frozenset({"too_large", "not_json", "not_an_object", "missing_fields", "bad_data", "bad_team_id", "poison"})


def _event_of(payload: bytes) -> dict[str, Any]:
    try:
        return decode_kafka_message(payload, max(len(payload), 1))
    except Exception:  # noqa: BLE001 -- an undecodable message: only its raw text is known
        return {}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def dead_letter_value(entry: DeadLetterEntry, now: datetime | None = None) -> dict[str, Any]:
    """The topic message of one dead letter."""
    event = _event_of(entry.payload)
    properties = event.get("properties")
    location = "plugin_server_decode" if entry.reason in DECODE_REASONS else "plugin_server_ingest_event"
    team_id = entry.team_id if entry.team_id is not None else event.get("team_id")
    return {
        "id": str(uuidt()),
        "event_uuid": entry.event_uuid or _text(event.get("uuid")),
        "event": _text(event.get("event")),
        "properties": compact_json(properties if isinstance(properties, dict) else {}),
        "distinct_id": _text(event.get("distinct_id")),
        "team_id": team_id if isinstance(team_id, int) else None,
        "elements_chain": "",
        "created_at": _text(event.get("timestamp")) or _text(event.get("now")),
        "ip": _text(event.get("ip")),
        "site_url": _text(event.get("site_url")),
        "now": _text(event.get("now")),
        "raw_payload": entry.payload.decode("utf-8", "replace"),
        "error_timestamp": format_clickhouse_seconds(now or datetime.now(timezone.utc)),
        "error_location": location,
        "error": f"ingestEvent failed. Error: {entry.error}",
        "reason": entry.reason,
        "tags": [entry.reason],
    }


class DeadLetterTopic:
    """Queues dead letters on ``events_dead_letter_queue``; ``flush`` makes them durable."""

    def __init__(self, producer: BatchingProducer | None = None, topic: str | None = None) -> None:
        self._producer = producer
        self.topic = topic or topic_name(DEAD_LETTER_TOPIC)

    @property
    def producer(self) -> BatchingProducer:
        if self._producer is None:
            self._producer = shared_producer()
        return self._producer

    def write(self, entries: Sequence[DeadLetterEntry]) -> None:
        producer = self.producer
        for entry in entries:
            value = dead_letter_value(entry)
            producer.queue(self.topic, value["event_uuid"], compact_json(value).encode())
        producer.flush()
        get_metrics().incr(KAFKA_DEAD_LETTERED, len(entries))
