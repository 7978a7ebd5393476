"""setup_clickhouse: the two layouts, types per server version, on the real ClickHouse (18.16 in tests)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from io import StringIO
from typing import TYPE_CHECKING

import pytest
from django.core.management import CommandError, call_command

from plugin_server.clickhouse import messages
from plugin_server.clickhouse.client import ServerFeatures, server_features
from plugin_server.clickhouse.schema import TABLES, SchemaError, kafka_table_sql, layout_statements, materialized_view_sql

if TYPE_CHECKING:
    from clickhouse_driver import Client

CURRENT = ServerFeatures.of_version("24.8.4.13")
OLD = ServerFeatures.of_version("18.16.1")


def _database(client: Client) -> str:
    return str(client.connection.database)


@pytest.mark.clickhouse
def test_plain_layout_on_the_real_server_makes_five_tables_with_the_message_columns(clickhouse_client: Client) -> None:
    database = _database(clickhouse_client)
    out = StringIO()
    call_command("setup_clickhouse", database=database, stdout=out)
    call_command("setup_clickhouse", database=database, stdout=StringIO())  # again: nothing to do, no error
    features = server_features(clickhouse_client)
    assert f"plain layout in {database}" in out.getvalue()
    tables = dict(clickhouse_client.execute("SELECT name, engine FROM system.tables WHERE database = %(d)s", {"d": database}))
    assert tables == {table.name: "ReplacingMergeTree" for table in TABLES}
    for topic_format in messages.TOPIC_FORMATS:
        described = clickhouse_client.execute(f"DESCRIBE TABLE {topic_format.table}")
        assert [row[0] for row in described] == [*topic_format.columns, "_timestamp", "_offset"]
    timestamp_type = dict((row[0], row[1]) for row in clickhouse_client.execute("DESCRIBE TABLE events"))["timestamp"]
    assert timestamp_type == ("DateTime64(6, 'UTC')" if features.datetime64 else "DateTime('UTC')")


@pytest.mark.clickhouse
def test_replacing_merge_tree_read_with_final_shows_a_twice_inserted_event_once(clickhouse_client: Client) -> None:
    call_command("setup_clickhouse", database=_database(clickhouse_client), stdout=StringIO())
    event_uuid = uuid.uuid4()
    moment = datetime(2021, 5, 17, 9, 59, 59, tzinfo=timezone.utc)
    row = (event_uuid, "$pageview", "{}", moment, 2, "ann", "", moment, moment, 5)
    insert = f"INSERT INTO events ({', '.join([*messages.EVENT_COLUMNS, '_timestamp', '_offset'])}) VALUES"
    clickhouse_client.execute(insert, [row])
    clickhouse_client.execute(insert, [row])
    assert clickhouse_client.execute("SELECT count() FROM events")[0][0] == 2
    assert clickhouse_client.execute("SELECT uuid, distinct_id FROM events FINAL") == [(event_uuid, "ann")]


@pytest.mark.clickhouse
def test_person_and_distinct_id_keep_the_last_row_written(clickhouse_client: Client) -> None:
    call_command("setup_clickhouse", database=_database(clickhouse_client), stdout=StringIO())
    person, other = uuid.uuid4(), uuid.uuid4()
    moment = datetime(2021, 5, 17, 9, 59, 59, tzinfo=timezone.utc)
    person_insert = f"INSERT INTO person ({', '.join([*messages.PERSON_COLUMNS, '_timestamp', '_offset'])}) VALUES"
    clickhouse_client.execute(person_insert, [(person, moment, 2, '{"a":1}', 0, 0, moment, 1)])
    clickhouse_client.execute(person_insert, [(person, moment, 2, '{"a":2}', 1, 0, moment, 2)])
    assert clickhouse_client.execute("SELECT properties, is_identified FROM person FINAL") == [('{"a":2}', 1)]
    pdi_insert = f"INSERT INTO person_distinct_id ({', '.join([*messages.PERSON_DISTINCT_ID_COLUMNS, '_timestamp', '_offset'])}) VALUES"
    clickhouse_client.execute(pdi_insert, [(17, "abc", person, 2, 0, moment, 1)])
    clickhouse_client.execute(pdi_insert, [(17, "abc", other, 2, 0, moment, 2)])  # moved to another person
    assert clickhouse_client.execute("SELECT distinct_id, person_id FROM person_distinct_id FINAL") == [("abc", other)]


@pytest.mark.clickhouse
def test_posthog_layout_is_refused_by_a_server_without_protobuf_input(clickhouse_client: Client) -> None:
    features = server_features(clickhouse_client)
    if features.protobuf_input:
        pytest.skip(f"ClickHouse {features.version} reads Protobuf: the refusal cannot be shown")
    with pytest.raises(CommandError, match="cannot read the Protobuf format.*use the plain layout"):
        call_command("setup_clickhouse", database=_database(clickhouse_client), layout="posthog", kafka_hosts="127.0.0.1:9092")


@pytest.mark.clickhouse
def test_posthog_kafka_tables_and_views_of_json_topics_are_accepted_by_the_real_server(clickhouse_client: Client) -> None:
    """The statements of the JSON topics run on the server at hand (whatever its version lacks, it picks around)."""
    database = _database(clickhouse_client)
    features = server_features(clickhouse_client)
    call_command("setup_clickhouse", database=database, stdout=StringIO())
    for table in TABLES:
        if table.json:
            clickhouse_client.execute(kafka_table_sql(table, features, database, "127.0.0.1:9092", "t_" + table.topic, "g"))
            clickhouse_client.execute(materialized_view_sql(table, features, database))
    engines = dict(clickhouse_client.execute("SELECT name, engine FROM system.tables WHERE database = %(d)s", {"d": database}))
    assert engines["kafka_person"] == "Kafka" and engines["person_mv"] == "MaterializedView"
    assert clickhouse_client.execute("DROP TABLE person_mv") == []


def test_current_clickhouse_gets_datetime64_protobuf_and_the_kafka_virtual_columns() -> None:
    statements = layout_statements("posthog", CURRENT, "posthog", kafka_hosts="kafka:9092", topic_prefix="p_", group="ch")
    assert len(statements) == 3 * len(TABLES)
    text = "\n".join(statements)
    assert "DateTime('UTC')" not in text and "timestamp DateTime64(6, 'UTC')" in text
    events_kafka = next(s for s in statements if "posthog.kafka_events\n" in s)
    assert "ENGINE = Kafka" in events_kafka
    assert "kafka_topic_list = 'p_clickhouse_events_proto'" in events_kafka
    assert "kafka_format = 'Protobuf'" in events_kafka and "kafka_schema = 'events:Event'" in events_kafka
    assert "kafka_group_name = 'ch_events'" in events_kafka and "kafka_broker_list = 'kafka:9092'" in events_kafka
    person_kafka = next(s for s in statements if "posthog.kafka_person\n" in s)
    assert "kafka_format = 'JSONEachRow'" in person_kafka and "DEFAULT" not in person_kafka
    view = next(s for s in statements if "posthog.events_mv" in s)
    assert view.endswith("_timestamp, _offset\nFROM posthog.kafka_events")
    assert "TO posthog.events\n" in view


def test_old_clickhouse_gets_whole_second_datetimes() -> None:
    text = "\n".join(layout_statements("plain", OLD, "db"))
    assert "DateTime64" not in text and "timestamp DateTime('UTC')" in text
    view = materialized_view_sql(TABLES[1], OLD, "db")
    assert "now() AS _timestamp, toUInt64(0) AS _offset" in view


@pytest.mark.parametrize(
    ("layout", "database", "hosts", "reason"),
    [
        ("other", "db", "k:1", "unknown layout"),
        ("plain", "db; DROP TABLE x", "k:1", "letters, digits and underscores only"),
        ("posthog", "db", "", "needs the brokers"),
    ],
)
def test_bad_requests_are_refused(layout: str, database: str, hosts: str, reason: str) -> None:
    with pytest.raises(SchemaError, match=reason):
        layout_statements(layout, CURRENT, database, kafka_hosts=hosts)


def test_print_with_a_server_version_needs_no_server() -> None:
    out = StringIO()
    call_command("setup_clickhouse", print_only=True, server_version="19.16", database="x", stdout=out)
    assert "CREATE TABLE IF NOT EXISTS x.events" in out.getvalue() and "DateTime('UTC')" in out.getvalue()


def test_the_kafka_tables_read_the_topics_under_kafka_prefix() -> None:
    from django.test import override_settings

    out = StringIO()
    with override_settings(KAFKA_PREFIX="team_a_"):
        call_command("setup_clickhouse", print_only=True, server_version="24.8", layout="posthog", kafka_hosts="k:9092", stdout=out)
    assert "kafka_topic_list = 'team_a_clickhouse_events_proto'" in out.getvalue()
    assert "kafka_topic_list = 'team_a_plugin_log_entries'" in out.getvalue()
