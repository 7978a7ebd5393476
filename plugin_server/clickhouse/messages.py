"""The messages of the ``clickhouse_*`` and ``plugin_log_entries`` topics: one definition for both ends.

The Kafka sink builds its message values with the ``*_value`` functions;
the ClickHouse writer (and a ClickHouse reading the topics itself) reads
them back. :data:`TOPIC_FORMATS` says, per topic, which table a message
fills and how its value becomes rows of that table (the decoders raise
:class:`BadMessage` with the reason for a value they cannot read).

Formats (the original's v0.21.3 messages; timestamps UTC):

- ``clickhouse_events_proto`` (key = event uuid): length-delimited protobuf
  ``Event`` (:mod:`plugin_server.clickhouse.proto`), timestamps
  ``YYYY-MM-DD HH:MM:SS.mmm``, ``created_at`` = ``timestamp``, properties as
  compact JSON text, ``elements_chain`` or ``""``.
- ``clickhouse_session_recording_events`` (key = event uuid): JSON
  ``{uuid, team_id, distinct_id, session_id, snapshot_data (JSON text),
  timestamp, created_at}``, millisecond timestamps.
- ``clickhouse_person`` (no key in the original): JSON ``{created_at,
  properties (JSON text), team_id, is_identified (bool), id (uuid)}``,
  ``created_at`` in milliseconds for a new person, in seconds for an update.
  An optional ``is_deleted`` (later versions) is read as well.
- ``clickhouse_person_unique_id`` (no key in the original): JSON ``{id (the
  posthog_persondistinctid row id), distinct_id, person_id (person uuid),
  team_id}``; optional ``is_deleted``.
- ``plugin_log_entries`` (key = entry id): JSON ``{id, team_id, plugin_id,
  plugin_config_id, timestamp, source, type, message, instance_id}``.

JSON texts are compact (no spaces) with non-ASCII characters as they are,
as the original's ``JSON.stringify`` wrote them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final

import orjson

from plugin_server.clickhouse.proto import EventRow, decode_events, encode_event
from plugin_server.ingestion.elements import elements_chain
from plugin_server.ingestion.timestamps import format_clickhouse, format_clickhouse_seconds
from plugin_server.json_codec import compact_utf8
from plugin_server.plugins.meta.console import cap_message

if TYPE_CHECKING:
    from plugin_server.ingestion.person_batch import DistinctIdChange
    from plugin_server.ingestion.person_store import PersonRecord
    from plugin_server.plugins.meta.logger import LogEntry
    from plugin_server.sinks.base import PreparedEvent, PreparedRecording

EVENTS_TOPIC: Final = "clickhouse_events_proto"
SESSION_RECORDING_EVENTS_TOPIC: Final = "clickhouse_session_recording_events"
PERSON_TOPIC: Final = "clickhouse_person"
PERSON_UNIQUE_ID_TOPIC: Final = "clickhouse_person_unique_id"
PLUGIN_LOG_ENTRIES_TOPIC: Final = "plugin_log_entries"


class BadMessage(ValueError):
    """A message value that cannot become a row; its text is the reason (for the dead letter)."""


def compact_json(value: Any) -> str:
    """``JSON.stringify(value)``: compact, non-ASCII kept; ``\\u`` escapes only where UTF-8 cannot go."""
    encoded = compact_utf8(value)
    if encoded is not None:
        return encoded.decode()
    # A big integer, a lone surrogate, a date: json's spelling, escaped to ASCII
    # so that a lone surrogate stays valid UTF-8 on the wire.
    return json.dumps(value, separators=(",", ":"), default=str)


def _json_bytes(value: dict[str, Any]) -> bytes:
    return compact_json(value).encode()


# --- Building message values (the Kafka sink) -------------------------------------


def event_row(event: PreparedEvent) -> EventRow:
    """The ``Event`` message of a prepared event; ``created_at`` is its timestamp (as at v0.21.3)."""
    timestamp = format_clickhouse(event.timestamp)
    return EventRow(
        uuid=event.uuid,
        event=event.event,
        properties=compact_json(event.properties),
        timestamp=timestamp,
        team_id=event.team_id,
        distinct_id=event.distinct_id,
        created_at=timestamp,
        elements_chain=elements_chain(event.elements),
    )


def event_value(event: PreparedEvent) -> bytes:
    """The ``clickhouse_events_proto`` value of a prepared event (key: its uuid)."""
    return encode_event(event_row(event))


def recording_value(recording: PreparedRecording) -> bytes:
    """The ``clickhouse_session_recording_events`` value of a ``$snapshot`` (key: its uuid)."""
    timestamp = format_clickhouse(recording.timestamp)
    return _json_bytes(
        {
            "uuid": recording.uuid,
            "team_id": recording.team_id,
            "distinct_id": recording.distinct_id,
            "session_id": recording.session_id,
            "snapshot_data": compact_json(recording.snapshot_data),
            "timestamp": timestamp,
            "created_at": timestamp,
        }
    )


def person_value(person: PersonRecord, *, created: bool) -> bytes:
    """The ``clickhouse_person`` value: ``created_at`` in milliseconds for a new person, seconds for an update."""
    created_at = format_clickhouse(person.created_at) if created else format_clickhouse_seconds(person.created_at)
    return _json_bytes(
        {
            "created_at": created_at,
            "properties": compact_json(person.properties),
            "team_id": person.team_id,
            "is_identified": bool(person.is_identified),
            "id": person.uuid,
        }
    )


def person_distinct_id_value(change: DistinctIdChange) -> bytes:
    """The ``clickhouse_person_unique_id`` value of a distinct id added or moved."""
    return _json_bytes(
        {"id": change.id, "distinct_id": change.distinct_id, "person_id": change.person_uuid, "team_id": change.team_id}
    )


def plugin_log_entry_value(entry: LogEntry) -> bytes:
    """The ``plugin_log_entries`` value of a log entry (key: its id); the message capped as in Postgres."""
    return _json_bytes(
        {
            "id": str(entry.id),
            "team_id": entry.team_id if entry.team_id is not None else 0,
            "plugin_id": entry.plugin_id,
            "plugin_config_id": entry.plugin_config_id,
            "timestamp": format_clickhouse(entry.timestamp),
            "source": entry.source,
            "type": entry.type,
            "message": cap_message(entry.message),
            "instance_id": str(entry.instance_id),
        }
    )


# --- Reading message values back (the ClickHouse writer) ---------------------------


def parse_timestamp(text: object) -> datetime:
    """A ClickHouse timestamp text (``YYYY-MM-DD HH:MM:SS[.fff]``, or ISO-8601) as an aware UTC datetime."""
    if not isinstance(text, str):
        raise BadMessage(f"timestamp is not a text: {text!r:.80}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadMessage(f"timestamp is not a date and time: {text!r:.80}") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _uuid(value: object, name: str) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise BadMessage(f"{name} is not a UUID: {value!r:.80}")


def _int(value: object, name: str, low: int = -(2**63), high: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadMessage(f"{name} is not an integer in range: {value!r:.80}")
    return value


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise BadMessage(f"{name} is not a text: {value!r:.80}")
    try:
        value.encode()
    except UnicodeEncodeError:
        # A lone surrogate (json reads "\ud800"): ClickHouse strings are UTF-8 bytes.
        return value.encode("utf-8", "replace").decode()
    return value


def _flag(value: object, name: str) -> int:
    if isinstance(value, bool) or value in (0, 1):
        return int(bool(value))
    raise BadMessage(f"{name} is not a boolean: {value!r:.80}")


def _json_object(value: bytes) -> Mapping[str, Any]:
    try:
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError:
            document = json.loads(value)  # what orjson refuses but JSON allows (lone surrogate escapes)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadMessage(f"value is not JSON: {error}") from None
    except RecursionError:
        raise BadMessage("value is not JSON this reader takes: nested too deep") from None
    if not isinstance(document, dict):
        raise BadMessage(f"value is not a JSON object: {type(document).__name__}")
    return document


def _field(document: Mapping[str, Any], name: str) -> Any:
    try:
        return document[name]
    except KeyError:
        raise BadMessage(f"missing field {name!r}") from None


Row = tuple[Any, ...]


def event_rows(value: bytes) -> list[Row]:
    """Rows of ``events`` (columns :data:`EVENT_COLUMNS`) from one ``clickhouse_events_proto`` value."""
    try:
        events = decode_events(value)
    except ValueError as error:
        raise BadMessage(str(error)) from None
    if not events:
        raise BadMessage("empty value: no Event message")
    rows: list[Row] = []
    for event in events:
        timestamp = parse_timestamp(event.timestamp)
        # created_at is the timestamp's own text at v0.21.3: read it once.
        created_at = timestamp if event.created_at in ("", event.timestamp) else parse_timestamp(event.created_at)
        rows.append(
            (
                _uuid(event.uuid, "uuid"),
                event.event,
                event.properties,
                timestamp,
                _int(event.team_id, "team_id"),
                event.distinct_id,
                event.elements_chain,
                created_at,
            )
        )
    return rows


def recording_rows(value: bytes) -> list[Row]:
    """One row of ``session_recording_events`` (:data:`RECORDING_COLUMNS`)."""
    document = _json_object(value)
    timestamp = parse_timestamp(_field(document, "timestamp"))
    created_at = document.get("created_at")
    snapshot_data = _field(document, "snapshot_data")
    return [
        (
            _uuid(_field(document, "uuid"), "uuid"),
            timestamp,
            _int(_field(document, "team_id"), "team_id"),
            _text(_field(document, "distinct_id"), "distinct_id"),
            _text(_field(document, "session_id"), "session_id"),
            _text(snapshot_data, "snapshot_data") if isinstance(snapshot_data, str) else compact_json(snapshot_data),
            parse_timestamp(created_at) if created_at else timestamp,
        )
    ]


def person_rows(value: bytes) -> list[Row]:
    """One row of ``person`` (:data:`PERSON_COLUMNS`)."""
    document = _json_object(value)
    properties = _field(document, "properties")
    return [
        (
            _uuid(_field(document, "id"), "id"),
            parse_timestamp(_field(document, "created_at")),
            _int(_field(document, "team_id"), "team_id"),
            _text(properties, "properties") if isinstance(properties, str) else compact_json(properties),
            _flag(_field(document, "is_identified"), "is_identified"),
            _flag(document.get("is_deleted", 0), "is_deleted"),
        )
    ]


def person_distinct_id_rows(value: bytes) -> list[Row]:
    """One row of ``person_distinct_id`` (:data:`PERSON_DISTINCT_ID_COLUMNS`)."""
    document = _json_object(value)
    return [
        (
            _int(document.get("id", 0), "id"),
            _text(_field(document, "distinct_id"), "distinct_id"),
            _uuid(_field(document, "person_id"), "person_id"),
            _int(_field(document, "team_id"), "team_id"),
            _flag(document.get("is_deleted", 0), "is_deleted"),
        )
    ]


def plugin_log_entry_rows(value: bytes) -> list[Row]:
    """One row of ``plugin_log_entries`` (:data:`PLUGIN_LOG_ENTRY_COLUMNS`)."""
    document = _json_object(value)
    return [
        (
            _uuid(_field(document, "id"), "id"),
            _int(_field(document, "team_id"), "team_id"),
            _int(_field(document, "plugin_id"), "plugin_id"),
            _int(_field(document, "plugin_config_id"), "plugin_config_id"),
            parse_timestamp(_field(document, "timestamp")),
            _text(_field(document, "source"), "source"),
            _text(_field(document, "type"), "type"),
            _text(_field(document, "message"), "message"),
            _uuid(_field(document, "instance_id"), "instance_id"),
        )
    ]


EVENT_COLUMNS: Final = (
    "uuid",
    "event",
    "properties",
    "timestamp",
    "team_id",
    "distinct_id",
    "elements_chain",
    "created_at",
)
RECORDING_COLUMNS: Final = ("uuid", "timestamp", "team_id", "distinct_id", "session_id", "snapshot_data", "created_at")
PERSON_COLUMNS: Final = ("id", "created_at", "team_id", "properties", "is_identified", "is_deleted")
PERSON_DISTINCT_ID_COLUMNS: Final = ("id", "distinct_id", "person_id", "team_id", "is_deleted")
PLUGIN_LOG_ENTRY_COLUMNS: Final = (
    "id",
    "team_id",
    "plugin_id",
    "plugin_config_id",
    "timestamp",
    "source",
    "type",
    "message",
    "instance_id",
)


@dataclass(frozen=True, slots=True)
class TopicFormat:
    """How one topic's messages become rows of one table (plus ``_timestamp`` and ``_offset``)."""

    topic: str
    table: str
    columns: tuple[str, ...]
    rows: Callable[[bytes], list[Row]]
    json: bool  # JSONEachRow values (else the protobuf Event)


TOPIC_FORMATS: Final[tuple[TopicFormat, ...]] = (
    TopicFormat(EVENTS_TOPIC, "events", EVENT_COLUMNS, event_rows, json=False),
    TopicFormat(PERSON_TOPIC, "person", PERSON_COLUMNS, person_rows, json=True),
    TopicFormat(PERSON_UNIQUE_ID_TOPIC, "person_distinct_id", PERSON_DISTINCT_ID_COLUMNS, person_distinct_id_rows, json=True),
    TopicFormat(SESSION_RECORDING_EVENTS_TOPIC, "session_recording_events", RECORDING_COLUMNS, recording_rows, json=True),
    TopicFormat(PLUGIN_LOG_ENTRIES_TOPIC, "plugin_log_entries", PLUGIN_LOG_ENTRY_COLUMNS, plugin_log_entry_rows, json=True),
)
