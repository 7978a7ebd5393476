"""The Postgres pipeline's sink: events, element groups, session recordings.

A batch costs at most four statements, whatever its size: element groups,
their elements, events, recordings. Events and recordings are sent as one
JSON document per batch (``INSERT ... SELECT FROM jsonb_to_recordset(%s)``),
element groups and elements as one array per column (``unnest``), so the
statement text (and its plan) is the same for every batch. Element groups already known to exist
cost nothing: this process remembers (team, hash) pairs once their
transaction has committed, in a bounded LRU.

Element groups are inserted sorted by (team, hash) with ``ON CONFLICT DO
NOTHING RETURNING``: only the groups this transaction really created get
element rows, and two servers racing on one group wait for each other
rather than deadlock or duplicate elements.

Metrics: ``ingestion.sink.write_time`` (one batch) and ``ingestion.sink.rows``
(per table), both tagged ``sink=postgres``.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence

from django.db import connection, transaction
from django.db.backends.utils import CursorWrapper

from plugin_server.ingestion.elements import Element, elements_hash
from plugin_server.json_codec import dumps_text
from plugin_server.metrics import SINK_ROWS, SINK_WRITE_TIME, get_metrics, timed
from plugin_server.models import has_model
from plugin_server.sinks.base import PreparedBatch, PreparedEvent, PreparedRecording
from plugin_server.sinks.recordings_kafka import KafkaRecordings

logger = logging.getLogger(__name__)

_INSERT_GROUPS = (
    "INSERT INTO posthog_elementgroup (team_id, hash)"
    " SELECT team_id, hash FROM unnest(%s::int[], %s::varchar[]) AS new (team_id, hash)"
    " ON CONFLICT DO NOTHING RETURNING id, team_id, hash"
)
_INSERT_ELEMENTS = (
    'INSERT INTO posthog_element (text, tag_name, href, attr_id, nth_child, nth_of_type, attributes, "order",'
    " event_id, attr_class, group_id)"
    " SELECT text, tag_name, href, attr_id, nth_child, nth_of_type, attributes::jsonb, position, NULL,"
    " CASE WHEN classes IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(classes::jsonb)) END,"
    " group_id"
    " FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[], %s::int[], %s::int[], %s::text[],"
    " %s::int[], %s::text[], %s::int[])"
    " AS new (text, tag_name, href, attr_id, nth_child, nth_of_type, attributes, position, classes, group_id)"
)
# created_at is the event's timestamp, as at v0.21.3.
_INSERT_EVENTS = (
    "INSERT INTO posthog_event (created_at, event, distinct_id, properties, team_id, timestamp, elements, elements_hash)"
    " SELECT timestamp, event, distinct_id, properties, team_id, timestamp, elements, elements_hash"
    " FROM jsonb_to_recordset(%s::jsonb) AS new (timestamp timestamptz, event varchar, distinct_id varchar,"
    " properties jsonb, team_id int, elements jsonb, elements_hash varchar)"
    " RETURNING id"
)
# jsonb_to_recordset reads a JSON null as SQL NULL; the column wants the JSON null the client sent.
_INSERT_RECORDINGS = (
    "INSERT INTO posthog_sessionrecordingevent (created_at, team_id, distinct_id, session_id, timestamp, snapshot_data)"
    " SELECT timestamp, team_id, distinct_id, session_id, timestamp, COALESCE(snapshot_data, 'null'::jsonb)"
    " FROM jsonb_to_recordset(%s::jsonb) AS new (timestamp timestamptz, team_id int, distinct_id varchar,"
    " session_id varchar, snapshot_data jsonb)"
)


class PostgresSink:
    """Writes prepared batches to ``posthog_event``, ``posthog_elementgroup``/``posthog_element``
    and ``posthog_sessionrecordingevent``.

    ``known_groups`` bounds the memory of element groups known to exist
    (about 150 bytes each)."""

    name = "postgres"
    transactional = True  # rows commit with the batch's uuid claims and persons

    def __init__(self, known_groups: int = 100_000) -> None:
        self._known_groups_size = known_groups
        self._known_groups: OrderedDict[tuple[int, str], None] = OrderedDict()
        self._recordings_to_kafka = None if has_model("SessionRecordingEvent") else KafkaRecordings()

    def write(self, batch: PreparedBatch) -> None:
        """Store the batch; must run inside a transaction (the ingester's)."""
        with timed(SINK_WRITE_TIME, {"sink": "postgres"}), connection.cursor() as cursor:
            if batch.events:
                hashes = [elements_hash(event.elements) if event.elements else "" for event in batch.events]
                self._write_groups(
                    cursor, [(event.team_id, digest, event.elements) for event, digest in zip(batch.events, hashes) if digest]
                )
                self._write_events(cursor, batch.events, hashes)
                get_metrics().incr(SINK_ROWS, len(batch.events), {"sink": "postgres", "table": "posthog_event"})
            if batch.recordings and self._recordings_to_kafka is not None:
                # The host keeps recordings in ClickHouse only (no posthog_sessionrecordingevent).
                self._recordings_to_kafka.write(batch.recordings)
            elif batch.recordings:
                self._write_recordings(cursor, batch.recordings)
                get_metrics().incr(SINK_ROWS, len(batch.recordings), {"sink": "postgres", "table": "posthog_sessionrecordingevent"})

    def flush(self) -> None:
        """Nothing to wait for: the batch is durable when the ingester's transaction commits."""

    def _write_groups(self, cursor: CursorWrapper, groups: Sequence[tuple[int, str, list[Element]]]) -> None:
        wanted: dict[tuple[int, str], list[Element]] = {}
        for team_id, digest, elements in groups:
            key = (team_id, digest)
            if key in self._known_groups:
                self._known_groups.move_to_end(key)
            else:
                wanted.setdefault(key, elements)
        if not wanted:
            return
        keys = sorted(wanted)
        cursor.execute(_INSERT_GROUPS, [[team_id for team_id, _ in keys], [digest for _, digest in keys]])
        created = cursor.fetchall()
        if created:
            self._write_elements(cursor, [(group_id, wanted[(team_id, digest)]) for group_id, team_id, digest in created])
        # Remember the groups only once they are sure to exist: a rolled-back batch created none.
        transaction.on_commit(lambda: self._remember_groups(keys))

    def _remember_groups(self, keys: list[tuple[int, str]]) -> None:
        for key in keys:
            self._known_groups[key] = None
        while len(self._known_groups) > self._known_groups_size:
            self._known_groups.popitem(last=False)

    def _write_elements(self, cursor: CursorWrapper, groups: list[tuple[int, list[Element]]]) -> None:
        columns: list[list[object]] = [[] for _ in range(10)]
        for group_id, elements in groups:
            for position, element in enumerate(elements):
                row = (
                    element.text,
                    element.tag_name,
                    element.href,
                    element.attr_id,
                    element.nth_child,
                    element.nth_of_type,
                    json.dumps(element.attributes),
                    position,
                    None if element.attr_class is None else json.dumps(element.attr_class),
                    group_id,
                )
                for column, value in zip(columns, row):
                    column.append(value)
        cursor.execute(_INSERT_ELEMENTS, columns)

    def _write_events(self, cursor: CursorWrapper, events: Sequence[PreparedEvent], hashes: list[str]) -> None:
        rows = [
            {
                "timestamp": event.timestamp.isoformat(),
                "event": event.event,
                "distinct_id": event.distinct_id,
                "properties": event.properties,
                "team_id": event.team_id,
                "elements": [element.to_event_json() for element in event.elements],
                "elements_hash": digest,
            }
            for event, digest in zip(events, hashes)
        ]
        cursor.execute(_INSERT_EVENTS, [_json_text(rows)])
        # Rows come back in insertion order, which is the document's order (ids are for webhooks).
        for event, (row_id,) in zip(events, cursor.fetchall()):
            event.row_id = row_id

    def _write_recordings(self, cursor: CursorWrapper, recordings: Sequence[PreparedRecording]) -> None:
        rows = [
            {
                "timestamp": recording.timestamp.isoformat(),
                "team_id": recording.team_id,
                "distinct_id": recording.distinct_id,
                "session_id": recording.session_id,
                "snapshot_data": recording.snapshot_data,
            }
            for recording in recordings
        ]
        cursor.execute(_INSERT_RECORDINGS, [_json_text(rows)])


def _json_text(rows: list[dict[str, object]]) -> str:
    # The whole batch as one JSON document: encoded by the C encoder in one call
    # and sent as one parameter, where arrays of texts would be escaped item by item.
    return dumps_text(rows)
