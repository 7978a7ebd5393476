"""The ClickHouse tables of the Kafka pipeline, in two layouts (docs/clickhouse.md).

``plain``: five ReplacingMergeTree tables that ``manage.py
run_clickhouse_writer`` fills from the topics. ``posthog``: the same
tables, each fed by a Kafka-engine table reading its topic and a
materialised view, as PostHog sets them up, for a ClickHouse that reaches
the brokers itself (and can read Protobuf, for ``clickhouse_events_proto``).

Either way every table is a ``ReplacingMergeTree(_timestamp)`` whose sorting
key names one stored thing (an event uuid, a person id, a distinct id, a log
entry id), so a message inserted twice (a re-delivery after a crash) is one
row when read with ``FINAL``, and for persons and distinct ids the row
inserted last wins.

Types follow the server: ``DateTime64(6, 'UTC')`` where it exists (20.1+),
else ``DateTime('UTC')`` (whole seconds: 18.x/19.x, Debian's 18.16).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from plugin_server.clickhouse import messages
from plugin_server.clickhouse.client import ServerFeatures
from plugin_server.clickhouse.proto import FORMAT_SCHEMA

LAYOUTS: Final = ("plain", "posthog")
# Columns every table adds to its message's: the version (when the row was
# written, or the Kafka message's time in the posthog layout) and the offset.
KAFKA_COLUMNS: Final = (("_timestamp", "DateTime"), ("_offset", "UInt64"))


class SchemaError(Exception):
    """The layout asked for cannot be made on this server."""


@dataclass(frozen=True, slots=True)
class Table:
    """One table: its message columns (names from :mod:`.messages`), engine keys and its topic."""

    name: str
    topic: str
    columns: tuple[tuple[str, str], ...]  # (name, type) with "DT" for the server's date-time type
    partition_by: str | None
    order_by: str
    json: bool

    def column_types(self, features: ServerFeatures) -> list[tuple[str, str]]:
        date_time = "DateTime64(6, 'UTC')" if features.datetime64 else "DateTime('UTC')"
        return [(name, date_time if kind == "DT" else kind) for name, kind in self.columns]


def _table(topic_format: messages.TopicFormat, types: dict[str, str], partition_by: str | None, order_by: str) -> Table:
    # The column list is the message format's own, so writer and schema cannot drift apart.
    return Table(
        name=topic_format.table,
        topic=topic_format.topic,
        columns=tuple((column, types[column]) for column in topic_format.columns),
        partition_by=partition_by,
        order_by=order_by,
        json=topic_format.json,
    )


_FORMATS = {topic_format.table: topic_format for topic_format in messages.TOPIC_FORMATS}

TABLES: Final[tuple[Table, ...]] = (
    _table(
        _FORMATS["events"],
        {
            "uuid": "UUID",
            "event": "String",
            "properties": "String",
            "timestamp": "DT",
            "team_id": "Int64",
            "distinct_id": "String",
            "elements_chain": "String",
            "created_at": "DT",
        },
        "toYYYYMM(timestamp)",
        "(team_id, toDate(timestamp), distinct_id, uuid)",
    ),
    _table(
        _FORMATS["person"],
        {
            "id": "UUID",
            "created_at": "DT",
            "team_id": "Int64",
            "properties": "String",
            "is_identified": "UInt8",
            "is_deleted": "UInt8 DEFAULT 0",
        },
        None,
        "(team_id, id)",
    ),
    _table(
        _FORMATS["person_distinct_id"],
        {"id": "Int64", "distinct_id": "String", "person_id": "UUID", "team_id": "Int64", "is_deleted": "UInt8 DEFAULT 0"},
        None,
        # A distinct id belongs to one person per team: the latest row is its owner.
        "(team_id, distinct_id)",
    ),
    _table(
        _FORMATS["session_recording_events"],
        {
            "uuid": "UUID",
            "timestamp": "DT",
            "team_id": "Int64",
            "distinct_id": "String",
            "session_id": "String",
            "snapshot_data": "String",
            "created_at": "DT",
        },
        "toYYYYMMDD(timestamp)",
        "(team_id, toHour(timestamp), session_id, timestamp, uuid)",
    ),
    _table(
        _FORMATS["plugin_log_entries"],
        {
            "id": "UUID",
            "team_id": "Int64",
            "plugin_id": "Int64",
            "plugin_config_id": "Int64",
            "timestamp": "DT",
            "source": "String",
            "type": "String",
            "message": "String",
            "instance_id": "UUID",
        },
        "toYYYYMMDD(timestamp)",
        "(team_id, plugin_id, plugin_config_id, timestamp, id)",
    ),
)


def escape_clickhouse_string(text: str) -> str:
    """The text for a ClickHouse string literal: backslash → ``\\\\``, quote → ``\\'`` (the original's escaping)."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def quote(text: str) -> str:
    """A ClickHouse string literal."""
    return f"'{escape_clickhouse_string(text)}'"


def _columns_sql(columns: Sequence[tuple[str, str]]) -> str:
    return ",\n".join(f"    {name} {kind}" for name, kind in columns)


def storage_table_sql(table: Table, features: ServerFeatures, database: str) -> str:
    """CREATE TABLE of the ReplacingMergeTree table that reads see."""
    columns = [*table.column_types(features), *KAFKA_COLUMNS]
    partition = f"\nPARTITION BY {table.partition_by}" if table.partition_by else ""
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.{table.name}\n(\n{_columns_sql(columns)}\n)\n"
        f"ENGINE = ReplacingMergeTree(_timestamp){partition}\nORDER BY {table.order_by}"
    )


def kafka_table_sql(table: Table, features: ServerFeatures, database: str, kafka_hosts: str, topic: str, group: str) -> str:
    """CREATE TABLE of the Kafka-engine table that reads ``topic`` (posthog layout)."""
    # A Kafka table holds the message's own columns; defaults (is_deleted) do not apply there.
    columns = [(name, kind.replace(" DEFAULT 0", "")) for name, kind in table.column_types(features)]
    settings = [
        f"kafka_broker_list = {quote(kafka_hosts)}",
        f"kafka_topic_list = {quote(topic)}",
        f"kafka_group_name = {quote(group)}",
        f"kafka_format = {quote('JSONEachRow' if table.json else 'Protobuf')}",
    ]
    if not table.json:
        settings.append(f"kafka_schema = {quote(FORMAT_SCHEMA)}")
    if features.kafka_virtual_columns:  # the same releases (19.x) brought both
        settings.append("kafka_skip_broken_messages = 100")
    return (
        f"CREATE TABLE IF NOT EXISTS {database}.kafka_{table.name}\n(\n{_columns_sql(columns)}\n)\n"
        f"ENGINE = Kafka\nSETTINGS " + ",\n    ".join(settings)
    )


def materialized_view_sql(table: Table, features: ServerFeatures, database: str) -> str:
    """CREATE MATERIALIZED VIEW moving what the Kafka table reads into the storage table (posthog layout)."""
    names = [name for name, _ in table.columns]
    # Without the Kafka table's virtual columns (before 19.x) the version is the time of the insert.
    version = "_timestamp, _offset" if features.kafka_virtual_columns else "now() AS _timestamp, toUInt64(0) AS _offset"
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{table.name}_mv TO {database}.{table.name}\n"
        f"AS SELECT {', '.join(names)}, {version}\nFROM {database}.kafka_{table.name}"
    )


def layout_statements(
    layout: str,
    features: ServerFeatures,
    database: str,
    *,
    kafka_hosts: str = "",
    topic_prefix: str = "",
    group: str = "clickhouse",
) -> list[str]:
    """Every statement that creates ``layout`` in ``database`` (which must exist), in order.

    ``topic_prefix`` goes before every topic name (tests use their own
    topics); the posthog layout's Kafka tables join the consumer group
    ``group`` (one per table: ``<group>_<table>``)."""
    if layout not in LAYOUTS:
        raise SchemaError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    check_identifier(database)
    statements = [storage_table_sql(table, features, database) for table in TABLES]
    if layout == "plain":
        return statements
    if not features.kafka_engine:
        raise SchemaError(f"this ClickHouse ({features.version}) has no Kafka engine: use the plain layout")
    if not features.protobuf_input:
        raise SchemaError(
            f"this ClickHouse ({features.version}) cannot read the Protobuf format, which the "
            f"{messages.EVENTS_TOPIC} topic holds: use the plain layout and run_clickhouse_writer, "
            "or a ClickHouse of 20.1 or later"
        )
    if not kafka_hosts:
        raise SchemaError("the posthog layout needs the brokers as ClickHouse reaches them (KAFKA_HOSTS or --kafka-hosts)")
    for table in TABLES:
        statements.append(
            kafka_table_sql(table, features, database, kafka_hosts, topic_prefix + table.topic, f"{group}_{table.name}")
        )
        statements.append(materialized_view_sql(table, features, database))
    return statements


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_identifier(name: str) -> str:
    """``name`` if it may stand unquoted in SQL as a database name; SchemaError otherwise."""
    if not _IDENTIFIER.fullmatch(name):
        raise SchemaError(f"database name {name!r}: letters, digits and underscores only")
    return name


def create_database_sql(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {check_identifier(database)}"
