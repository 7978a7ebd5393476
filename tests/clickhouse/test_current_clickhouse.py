"""Current ClickHouse (26.x, as chDB: ClickHouse as a library) reads what the sink writes and takes the DDL.

Debian's server in the other tests is 18.16: no DateTime64, no Protobuf
input. Here the ClickHouse of today, which `bin/services up` installs with
pip into SERVICES_DIR (``chdb-core``), runs in this process: it reads the
length-delimited ``Event`` messages with ``events.proto`` exactly as a
posthog-layout Kafka table would, and runs the plain layout's statements.
(chDB has no working Kafka engine, so the Kafka tables themselves are
checked as text in test_schema.py.)
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from plugin_server.clickhouse import messages
from plugin_server.clickhouse.client import server_features
from plugin_server.clickhouse.proto import FORMAT_SCHEMA
from plugin_server.clickhouse.schema import TABLES, layout_statements, quote
from plugin_server.ingestion.elements import Element
from plugin_server.sinks.base import PreparedEvent

ROOT = Path(__file__).resolve().parents[2]
CHDB_DIR = Path(os.environ.get("SERVICES_DIR") or ROOT / ".services") / "chdb-core-26.9.0"
# The one well-known type events.proto imports; a ClickHouse server ships it
# under google_protos_path, chDB does not.
TIMESTAMP_PROTO = """syntax = "proto3";
package google.protobuf;
message Timestamp {
  int64 seconds = 1;
  int32 nanos = 2;
}
"""


class ChdbClient:
    """The part of clickhouse-driver's Client that server_features uses, over a chDB session."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def execute(self, query: str) -> list[tuple[str, ...]]:
        text = str(self.session.query(query, "TabSeparatedRaw"))  # no escaping (no texts with tabs here)
        return [tuple(line.split("\t")) for line in text.splitlines() if line]


@pytest.fixture
def current_clickhouse(tmp_path: Path) -> Iterator[ChdbClient]:
    if not (CHDB_DIR / "chdb" / "__init__.py").exists():
        pytest.fail(f"chDB is not installed in {CHDB_DIR}: run bin/services up (bin/test does)")
    if str(CHDB_DIR) not in sys.path:
        sys.path.append(str(CHDB_DIR))
    from chdb.session import Session

    session = Session(str(tmp_path / "chdb"))
    yield ChdbClient(session)
    session.close()


def _events() -> list[PreparedEvent]:
    moment = datetime(2021, 5, 17, 9, 59, 59, 123000, tzinfo=timezone.utc)
    elements = [Element(tag_name="a", href="/a-url", attr_class=["small"], text='say "hi"', nth_child=1, nth_of_type=0)]
    return [
        PreparedEvent(str(uuid.uuid4()), 2, "ann", "$pageview", {"$current_url": "https://example.com/ö", "n": 1}, moment),
        PreparedEvent(str(uuid.uuid4()), 7, "bö", "$autocapture", {"big": "x" * 300}, moment, elements=elements),
        PreparedEvent(str(uuid.uuid4()), 2**40, "", "", {}, moment.replace(microsecond=0)),
    ]


def test_current_clickhouse_reads_the_sinks_protobuf_events_as_a_kafka_table_would(
    current_clickhouse: ChdbClient, tmp_path: Path
) -> None:
    schemas = tmp_path / "format_schemas"
    (schemas / "google" / "protobuf").mkdir(parents=True)
    (schemas / "google" / "protobuf" / "timestamp.proto").write_text(TIMESTAMP_PROTO)
    (schemas / "events.proto").write_text((ROOT / "plugin_server" / "clickhouse" / "events.proto").read_text())
    events = _events()
    data = tmp_path / "events.bin"
    data.write_bytes(b"".join(messages.event_value(event) for event in events))

    features = server_features(current_clickhouse)  # type: ignore[arg-type]
    assert features.datetime64 and features.protobuf_input
    # The column list and types of the posthog layout's kafka_events table on this server.
    events_table = next(table for table in TABLES if table.name == "events")
    structure = ", ".join(f"{name} {kind}" for name, kind in events_table.column_types(features))
    file_name, message = FORMAT_SCHEMA.split(":")
    query = (
        f"SELECT {', '.join(messages.EVENT_COLUMNS)} FROM file({quote(str(data))}, 'Protobuf', {quote(structure)})"
        f" SETTINGS format_schema = '{schemas / file_name}:{message}'"
    )
    read = current_clickhouse.execute(query)

    expected = [
        (str(row[0]), row[1], row[2], row[3].strftime("%Y-%m-%d %H:%M:%S.%f"), str(row[4]), row[5], row[6],
         row[7].strftime("%Y-%m-%d %H:%M:%S.%f"))
        for event in events
        for row in messages.event_rows(messages.event_value(event))
    ]
    assert read == expected
    assert read[0][3] == "2021-05-17 09:59:59.123000"  # milliseconds kept by DateTime64(6)
    assert read[1][6] == 'a.small:href="/a-url"nth-child="1"nth-of-type="0"text="say \\"hi\\""'


def test_plain_layout_runs_on_current_clickhouse_and_final_shows_a_reinserted_event_once(
    current_clickhouse: ChdbClient,
) -> None:
    features = server_features(current_clickhouse)  # type: ignore[arg-type]
    current_clickhouse.execute("CREATE DATABASE ph")
    for statement in layout_statements("plain", features, "ph"):
        current_clickhouse.execute(statement)
    types = dict((row[0], row[1]) for row in current_clickhouse.execute("DESCRIBE TABLE ph.events"))
    assert types["timestamp"] == "DateTime64(6, 'UTC')" and types["uuid"] == "UUID"
    event_uuid = str(uuid.uuid4())
    row = f"('{event_uuid}', '$pageview', '{{}}', '2021-05-17 09:59:59.123', 2, 'ann', '', '2021-05-17 09:59:59.123', now(), 5)"
    insert = f"INSERT INTO ph.events ({', '.join([*messages.EVENT_COLUMNS, '_timestamp', '_offset'])}) VALUES {row}"
    current_clickhouse.execute(insert)
    current_clickhouse.execute(insert)
    assert current_clickhouse.execute("SELECT count() FROM ph.events") == [("2",)]
    assert current_clickhouse.execute("SELECT uuid, timestamp FROM ph.events FINAL") == [
        (event_uuid, "2021-05-17 09:59:59.123000")
    ]
    engines = current_clickhouse.execute("SELECT name, engine FROM system.tables WHERE database = 'ph' ORDER BY name")
    assert engines == sorted((table.name, "ReplacingMergeTree") for table in TABLES)
