"""An in-memory sink: the third implementation of the Sink contract, for tests and benchmarks.

It keeps what a read model would show: one row per event uuid (a replayed
event replaces its earlier row, as ClickHouse's ReplacingMergeTree does),
the latest row per person and per distinct id. ``fail_flushes`` makes the
next flushes raise :class:`~plugin_server.exceptions.RetriableError`, the
way a broker that does not acknowledge makes the Kafka sink's flush raise.
"""

from __future__ import annotations

import threading
from typing import Any

from plugin_server.exceptions import RetriableError
from plugin_server.sinks.base import PreparedBatch, PreparedEvent, PreparedRecording


class MemorySink:
    """Stores batches in dictionaries; thread-safe."""

    name = "memory"
    transactional = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[PreparedBatch] = []
        self.events: dict[str, PreparedEvent] = {}
        self.recordings: dict[str, PreparedRecording] = {}
        self.persons: dict[str, dict[str, Any]] = {}  # uuid -> {properties, is_identified, team_id}
        self.distinct_ids: dict[tuple[int, str], str] = {}  # (team, distinct id) -> person uuid
        self.deleted_persons: set[str] = set()
        self.writes = 0
        self.fail_flushes = 0

    def write(self, batch: PreparedBatch) -> None:
        with self._lock:
            self._pending.append(batch)
            self.writes += 1

    def flush(self) -> None:
        with self._lock:
            if self.fail_flushes:
                self.fail_flushes -= 1
                raise RetriableError("memory sink: flush refused (fail_flushes)")
            pending, self._pending = self._pending, []
            for batch in pending:
                self._apply(batch)

    def _apply(self, batch: PreparedBatch) -> None:
        for row in [*batch.events, *batch.recordings, *batch.replayed]:
            if isinstance(row, PreparedEvent):
                self.events[row.uuid] = row
            else:
                self.recordings[row.uuid] = row
        changes = batch.persons
        for person in [*changes.created, *changes.updated]:
            self.persons[person.uuid] = {"team_id": person.team_id, "properties": dict(person.properties), "is_identified": person.is_identified}
            self.deleted_persons.discard(person.uuid)
        for change in changes.distinct_ids:
            self.distinct_ids[(change.team_id, change.distinct_id)] = change.person_uuid
        for person in changes.deleted:
            self.persons.pop(person.uuid, None)
            self.deleted_persons.add(person.uuid)
