"""The Sink protocol and the prepared rows every sink writes.

The ingester prepares a batch once (names, properties, timestamps,
elements, the person changes it committed to Postgres) and hands it to one
sink: :class:`~plugin_server.sinks.postgres.PostgresSink` (Postgres
pipeline), :class:`~plugin_server.sinks.kafka.KafkaSink` (Kafka pipeline:
the ClickHouse topics) or :class:`~plugin_server.sinks.memory.MemorySink`
(tests). A sink keeps every storage-specific detail (element groups,
elements chains, topics, encodings) to itself.

The contract, in the order the ingester calls it:

- ``write(batch)``: a *transactional* sink writes inside the ingester's
  Postgres transaction (its rows commit with the uuid claims and the
  persons); any other sink is called right after that transaction
  committed, with the person changes of the batch (``batch.persons``) to
  mirror, and also gets ``batch.replayed``: events whose uuid an earlier
  delivery already claimed, which it must store again idempotently (an
  earlier attempt may have committed Postgres and died before this sink
  made them durable). Their persons' current rows are in
  ``batch.persons.updated`` too.
- ``flush()``: returns when everything written so far is durable (broker
  acknowledgements); raises :class:`~plugin_server.exceptions.RetriableError`
  when it is not. Only then is the batch acknowledged to its source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from plugin_server.ingestion.elements import Element
from plugin_server.ingestion.person_batch import PersonChanges


@dataclass(slots=True)
class PreparedEvent:
    """A regular event ready to store.

    Every text in it is already safe for Postgres (no NUL characters, no
    lone surrogates, no NaN): see :func:`~plugin_server.ingestion.prepare.check_event`."""

    uuid: str  # lower-case 8-4-4-4-12 text
    team_id: int
    distinct_id: str
    event: str
    properties: dict[str, Any]
    timestamp: datetime
    elements: list[Element] = field(default_factory=list)
    site_url: str | None = None
    row_id: int | None = None  # set by a sink that stores rows with ids (posthog_event.id)


@dataclass(slots=True)
class PreparedRecording:
    """A ``$snapshot`` event ready to store as a session recording event."""

    uuid: str  # lower-case 8-4-4-4-12 text
    team_id: int
    distinct_id: str
    session_id: str
    snapshot_data: Any
    timestamp: datetime


@dataclass(slots=True)
class PreparedBatch:
    """Everything one ingested batch stores, in arrival order."""

    events: list[PreparedEvent] = field(default_factory=list)
    recordings: list[PreparedRecording] = field(default_factory=list)
    # What the batch's person work committed (empty for a transactional sink's write).
    persons: PersonChanges = field(default_factory=PersonChanges)
    # Already claimed by an earlier delivery: stored again by a non-transactional sink only.
    replayed: list[PreparedEvent | PreparedRecording] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.recordings)


class Sink(Protocol):
    """Stores prepared batches; see the module docstring for when each method runs."""

    name: str
    # True: write() runs inside the ingester's Postgres transaction (durable at its commit).
    transactional: bool

    def write(self, batch: PreparedBatch) -> None:
        """Store (or hand over) the batch; raises on failure, stores nothing partially on its own."""
        ...

    def flush(self) -> None:
        """Return when everything written is durable; RetriableError if it cannot be made so."""
        ...
