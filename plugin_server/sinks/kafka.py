"""The Kafka pipeline's sink: the ClickHouse topics.

Called right after the ingester committed a batch's uuid claims and persons
to Postgres (it is not transactional), it queues on the process's
:class:`~plugin_server.sinks.kafka_producer.BatchingProducer`:

- every regular event to ``clickhouse_events_proto`` (key: the event uuid;
  value: the length-delimited protobuf ``Event``);
- every ``$snapshot`` to ``clickhouse_session_recording_events`` (key: uuid);
- every person created (millisecond ``created_at``) or updated (seconds) to
  ``clickhouse_person`` and every distinct id added or moved to
  ``clickhouse_person_unique_id``, in the order Postgres got them. The
  original sent these without a key; here a person's messages are keyed by
  its uuid and a distinct id's by ``<team_id>:<distinct_id>``, so that each
  stays in one partition, in order, whatever consumes the topic;
- events of ``batch.replayed`` again (a ReplacingMergeTree keyed by uuid
  keeps one row), with their persons' current rows.

Persons merged away get a ``clickhouse_person`` row with ``is_deleted: 1``
(the later versions' tombstone) and are deleted from ClickHouse right away
(``ALTER TABLE ... DELETE`` through the ClickHouse client,
:func:`plugin_server.clickhouse.persons.delete_persons`), after the Postgres
commit. The tombstone covers the mutation's blind spot: a row of the person
still on its way through the writer, inserted after the mutation ran. :meth:`flush` returns once the broker acknowledged every
message: only then does the consumer commit the batch's offsets.

Metrics: ``kafka_queue.single_save.standard`` / ``.snapshot`` (timing of
queuing one batch's events / recordings, the original's names) and
``ingestion.sink.rows`` tagged ``sink=kafka`` and the topic.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

from plugin_server.clickhouse.messages import (
    EVENTS_TOPIC,
    PERSON_TOPIC,
    PERSON_UNIQUE_ID_TOPIC,
    SESSION_RECORDING_EVENTS_TOPIC,
    compact_json,
    event_value,
    person_distinct_id_value,
    person_value,
    recording_value,
)
from plugin_server.config import get_config
from plugin_server.ingestion.person_batch import PersonChanges
from plugin_server.ingestion.person_store import PersonRecord
from plugin_server.metrics import CLICKHOUSE_PERSON_DELETE_FAILED, KAFKA_QUEUE_SINGLE_SAVE_SNAPSHOT, KAFKA_QUEUE_SINGLE_SAVE_STANDARD, SINK_ROWS, get_metrics
from plugin_server.sinks.base import PreparedBatch, PreparedEvent, PreparedRecording
from plugin_server.sinks.kafka_producer import BatchingProducer, shared_producer

logger = logging.getLogger(__name__)

PersonDeleter = Callable[[Sequence[str]], None]


def deleted_person_value(person: PersonRecord) -> bytes:
    """A ``clickhouse_person`` row with ``is_deleted: 1`` (the later versions' way of deleting)."""
    value = json.loads(person_value(person, created=False))
    value["is_deleted"] = 1
    return compact_json(value).encode()


def _clickhouse_person_deleter(person_uuids: Sequence[str]) -> None:
    from plugin_server.clickhouse.persons import delete_persons

    delete_persons(person_uuids)


class KafkaSink:
    """Produces prepared batches and their person changes to the ClickHouse topics."""

    name = "kafka"
    transactional = False

    def __init__(
        self, producer: BatchingProducer | None = None, delete_persons: PersonDeleter | None = None, *, topic_prefix: str | None = None
    ) -> None:
        self._producer = producer
        self._delete_persons = delete_persons or _clickhouse_person_deleter
        # KAFKA_PREFIX unless given (tests give each run its own topics).
        if topic_prefix is None:
            topic_prefix = get_config().kafka_prefix
        self.events_topic = topic_prefix + EVENTS_TOPIC
        self.recordings_topic = topic_prefix + SESSION_RECORDING_EVENTS_TOPIC
        self.person_topic = topic_prefix + PERSON_TOPIC
        self.person_unique_id_topic = topic_prefix + PERSON_UNIQUE_ID_TOPIC

    @property
    def producer(self) -> BatchingProducer:
        if self._producer is None:
            self._producer = shared_producer()
        return self._producer

    def write(self, batch: PreparedBatch) -> None:
        producer = self.producer
        events = [*batch.events, *(row for row in batch.replayed if isinstance(row, PreparedEvent))]
        recordings = [*batch.recordings, *(row for row in batch.replayed if isinstance(row, PreparedRecording))]
        metrics = get_metrics()
        if events:
            started = time.perf_counter()
            for event in events:
                producer.queue(self.events_topic, event.uuid, event_value(event))
            metrics.timing(KAFKA_QUEUE_SINGLE_SAVE_STANDARD, (time.perf_counter() - started) * 1000)
            metrics.incr(SINK_ROWS, len(events), {"sink": self.name, "table": self.events_topic})
        if recordings:
            started = time.perf_counter()
            for recording in recordings:
                producer.queue(self.recordings_topic, recording.uuid, recording_value(recording))
            metrics.timing(KAFKA_QUEUE_SINGLE_SAVE_SNAPSHOT, (time.perf_counter() - started) * 1000)
            metrics.incr(SINK_ROWS, len(recordings), {"sink": self.name, "table": self.recordings_topic})
        self._mirror_persons(batch.persons)

    def _mirror_persons(self, changes: PersonChanges) -> None:
        producer = self.producer
        # A person created or updated and then merged away in the same batch
        # is only deleted: a row sent after the delete would bring it back.
        deleted = {person.uuid for person in changes.deleted}
        for person in changes.created:
            if person.uuid not in deleted:
                producer.queue(self.person_topic, person.uuid, person_value(person, created=True))
        for person in changes.updated:
            if person.uuid not in deleted:
                producer.queue(self.person_topic, person.uuid, person_value(person, created=False))
        for change in changes.distinct_ids:
            producer.queue(self.person_unique_id_topic, f"{change.team_id}:{change.distinct_id}", person_distinct_id_value(change))
        for person in changes.deleted:
            # The later versions' tombstone: newer than every earlier row of the
            # person (same key, same partition), so a row the writer inserts
            # after the mutation below cannot bring the person back.
            producer.queue(self.person_topic, person.uuid, deleted_person_value(person))
        if changes.deleted:
            try:
                self._delete_persons([person.uuid for person in changes.deleted])
            except Exception:  # noqa: BLE001 -- ClickHouse away: the tombstones above already delete them for readers
                logger.exception("could not delete %d merged persons from ClickHouse; their tombstones stand", len(changes.deleted))
                get_metrics().incr(CLICKHOUSE_PERSON_DELETE_FAILED, len(changes.deleted))

    def flush(self) -> None:
        self.producer.flush()
