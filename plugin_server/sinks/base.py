"""The Sink protocol and the prepared rows every sink writes.

The ingester prepares a batch once (names, properties, timestamps,
elements) and hands it to one sink: :class:`~plugin_server.sinks.postgres.PostgresSink`
for the Postgres pipeline, a Kafka/ClickHouse sink later. A sink writes a
whole batch in a bounded number of statements, inside the transaction the
ingester holds, and keeps every storage-specific detail (element groups,
elements chains, topics) to itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from plugin_server.ingestion.elements import Element


@dataclass(slots=True)
class PreparedEvent:
    """A regular event ready to store (spec: ingestion.md §3.6, §3.7).

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
    """A ``$snapshot`` event ready to store as a session recording event (§3.5)."""

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

    def __len__(self) -> int:
        return len(self.events) + len(self.recordings)


class Sink(Protocol):
    """Stores prepared batches. ``write`` runs inside the ingester's transaction;
    it raises on failure and must store nothing partially on its own."""

    def write(self, batch: PreparedBatch) -> None: ...
