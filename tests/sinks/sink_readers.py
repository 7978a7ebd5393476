"""Read models of each sink, for the contract tests: what a reader of the sink's store would see.

Each reader answers the same three questions (events by uuid, persons by
uuid, distinct ids to person uuids), with the read-model semantics the
docs promise: one row per event uuid (ClickHouse's ReplacingMergeTree by
uuid read with FINAL), the latest row of a person and of a distinct id.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from plugin_server.clickhouse.messages import event_rows, person_distinct_id_rows, person_rows, recording_rows
from plugin_server.models import Event, Person, PersonDistinctId, SessionRecordingEvent
from plugin_server.sinks.kafka import KafkaSink
from plugin_server.sinks.memory import MemorySink


@dataclass
class ReadModel:
    events: dict[str, dict[str, Any]]  # uuid -> {event, distinct_id, team_id, properties}
    recordings: dict[str, dict[str, Any]]  # uuid -> {session_id, distinct_id}
    persons: dict[str, dict[str, Any]]  # uuid -> properties
    distinct_ids: dict[tuple[int, str], str]  # (team, distinct id) -> person uuid
    event_copies: int = 0  # rows before deduplication (the topic's messages, the table's rows)


def postgres_read_model() -> ReadModel:
    events = {}
    copies = 0
    for row in Event.objects.all().values("event", "distinct_id", "team_id", "properties"):
        # posthog_event has no uuid column: the tests put it in the properties.
        events[row["properties"]["test_uuid"]] = row
        copies += 1
    recordings = {
        f"{row['session_id']}/{row['distinct_id']}": row for row in SessionRecordingEvent.objects.values("session_id", "distinct_id")
    }
    persons = {str(person.uuid): person.properties for person in Person.objects.all()}
    distinct_ids = {
        (row.team_id, row.distinct_id): str(row.person.uuid) for row in PersonDistinctId.objects.select_related("person")
    }
    return ReadModel(events, recordings, persons, distinct_ids, copies)


def memory_read_model(sink: MemorySink) -> ReadModel:
    events = {
        uuid: {"event": row.event, "distinct_id": row.distinct_id, "team_id": row.team_id, "properties": row.properties}
        for uuid, row in sink.events.items()
    }
    recordings = {f"{row.session_id}/{row.distinct_id}": {"session_id": row.session_id} for row in sink.recordings.values()}
    persons = {uuid: person["properties"] for uuid, person in sink.persons.items()}
    return ReadModel(events, recordings, persons, dict(sink.distinct_ids), len(sink.events))


def read_topic(bootstrap: str, topic: str, timeout: float = 20.0) -> list[bytes]:
    """Every message of ``topic``, all partitions, from the beginning to the end."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}-{time.monotonic_ns()}", "enable.partition.eof": True})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return []
        partitions = [TopicPartition(topic, index, 0) for index in metadata.partitions]
        consumer.assign(partitions)
        open_partitions = {index for index in metadata.partitions}
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while open_partitions and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(message.partition())
                    continue
                if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    return values
                raise AssertionError(f"reading {topic}: {error}")
            values.append(message.value() or b"")
        return values
    finally:
        consumer.close()


def kafka_read_model(bootstrap: str, sink: KafkaSink) -> ReadModel:
    events: dict[str, dict[str, Any]] = {}
    copies = 0
    for value in read_topic(bootstrap, sink.events_topic):
        for uuid, event, properties, _timestamp, team_id, distinct_id, *_ in event_rows(value):
            events[str(uuid)] = {"event": event, "distinct_id": distinct_id, "team_id": team_id, "properties": json.loads(properties)}
            copies += 1
    recordings = {}
    for value in read_topic(bootstrap, sink.recordings_topic):
        for _uuid, _ts, _team, distinct_id, session_id, *_ in recording_rows(value):
            recordings[f"{session_id}/{distinct_id}"] = {"session_id": session_id}
    persons: dict[str, dict[str, Any]] = {}
    for value in read_topic(bootstrap, sink.person_topic):
        for person_uuid, _created, _team, properties, _identified, _deleted in person_rows(value):
            persons[str(person_uuid)] = json.loads(properties)
    distinct_ids = {}
    for value in read_topic(bootstrap, sink.person_unique_id_topic):
        for _id, distinct_id, person_uuid, team_id, _deleted in person_distinct_id_rows(value):
            distinct_ids[(team_id, distinct_id)] = str(person_uuid)
    return ReadModel(events, recordings, persons, distinct_ids, copies)
