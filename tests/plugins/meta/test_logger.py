"""Plugin log entries: formatting (spec §6.8) and the batched writer (§5.2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import DEFAULT_DB_ALIAS, connections
from django.test.utils import CaptureQueriesContext

from plugin_server.metrics import RecordingMetrics, set_metrics
from plugin_server.models import PluginLogEntry
from plugin_server.plugins.meta.console import MAX_MESSAGE_CHARS, format_log_message
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.logger import (
    MAX_INDEXED_MESSAGE_BYTES,
    SERVER_INSTANCE_ID,
    LogEntry,
    PluginLogWriter,
    forget_log_table_shape,
    store_log_entries,
)

pytestmark = pytest.mark.django_db


def inserts(captured: CaptureQueriesContext) -> list[str]:
    return [query["sql"] for query in captured.captured_queries if query["sql"].startswith("INSERT")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), ""),
        (("number =", 987), "number = 987"),
        (({1: "ein", 2: "zwei"},), '{"1":"ein","2":"zwei"}'),
        (([99, 79],), "[99,79]"),
        ((ValueError("disk full"),), "ValueError: disk full"),
        (("ünï", None, True, 1.5), "ünï None True 1.5"),
        ((b"bytes",), "bytes"),
    ],
)
def test_console_formatting(args: tuple[object, ...], message: str) -> None:
    """It joins arguments with spaces, JSON-encodes dicts and lists compactly, names errors."""
    assert format_log_message(args) == message


def test_long_message_is_cut() -> None:
    """It cuts a message longer than the limit and says so."""
    message = format_log_message(["x" * (MAX_MESSAGE_CHARS * 2)])
    assert len(message) == MAX_MESSAGE_CHARS
    assert message.endswith("(truncated)")


def test_circular_container_still_logs() -> None:
    """It logs a container JSON cannot encode (circular) with its repr instead of failing."""
    loop: list[object] = []
    loop.append(loop)
    assert format_log_message([loop]) == "[[...]]"


def test_entries_are_buffered_then_written_in_one_insert(ctx: PluginContext) -> None:
    """It writes 200 entries with one INSERT at flush, none before."""
    writer = PluginLogWriter(flush_size=500)
    connection = connections[DEFAULT_DB_ALIAS]
    with CaptureQueriesContext(connection) as captured:
        for number in range(200):
            writer.log(ctx, "CONSOLE", "LOG", "line", number)
        assert inserts(captured) == []
        assert writer.pending() == 200
        assert writer.flush() == 200
    assert len(inserts(captured)) == 1
    rows = PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id)
    assert rows.count() == 200
    row = rows.get(message="line 7")
    assert (row.team_id, row.plugin_id, row.source, row.type) == (ctx.team_id, ctx.plugin_id, "CONSOLE", "LOG")
    assert row.instance_id == SERVER_INSTANCE_ID
    assert writer.pending() == 0


def test_full_batch_flushes_in_the_caller(ctx: PluginContext) -> None:
    """It flushes by itself every flush_size entries, one INSERT each time."""
    writer = PluginLogWriter(flush_size=50, max_buffer=100)
    with CaptureQueriesContext(connections[DEFAULT_DB_ALIAS]) as captured:
        for number in range(120):
            writer.log(ctx, "CONSOLE", "INFO", number)
    assert len(inserts(captured)) == 2
    assert writer.pending() == 20
    writer.close()
    assert PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id).count() == 120


def test_flush_of_nothing_makes_no_query(ctx: PluginContext, django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    """It does not touch the database when nothing is buffered."""
    with django_assert_num_queries(0):
        assert PluginLogWriter().flush() == 0


def test_metrics_counted_per_source_team_plugin(ctx: PluginContext) -> None:
    """It counts logs.entries_created per source, team and plugin, once per flush."""
    metrics = RecordingMetrics()
    set_metrics(metrics)
    try:
        writer = PluginLogWriter()
        for _ in range(3):
            writer.log(ctx, "CONSOLE", "LOG", "x")
        writer.add(LogEntry.for_context(ctx, "SYSTEM", "INFO", "Plugin loaded"))
        writer.flush()
    finally:
        set_metrics(None)
    created = [call for call in metrics.calls if call[1] == "logs.entries_created"]
    assert sorted((call[2], call[3]["source"]) for call in created) == [(1, "SYSTEM"), (3, "CONSOLE")]
    assert all(call[3]["team_id"] == ctx.team_id and call[3]["plugin_id"] == ctx.plugin_id for call in created)


@contextmanager
def database_away() -> Iterator[None]:
    """The default connection pointed at a port where no Postgres listens, then restored."""
    connection = connections[DEFAULT_DB_ALIAS]
    saved = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = 1
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["PORT"] = saved


@pytest.mark.django_db(transaction=True)
def test_database_down_keeps_entries_bounded(ctx: PluginContext) -> None:
    """It keeps entries while the database is away, up to max_buffer (dropping the oldest, counted), without a flush storm."""
    metrics = RecordingMetrics()
    set_metrics(metrics)
    writer = PluginLogWriter(flush_size=5, max_buffer=8, flush_interval=3600)
    try:
        with database_away():
            for number in range(20):
                writer.log(ctx, "CONSOLE", "LOG", number)
        assert writer.pending() == 8
        # One failed attempt, then inline flushes wait for the retry time.
        assert metrics.total("logs.flush_failed") == 1
        assert metrics.total("logs.entries_dropped") == 12
    finally:
        set_metrics(None)
    assert [entry.message for entry in writer._buffer] == [str(number) for number in range(12, 20)]


@pytest.mark.django_db(transaction=True)
def test_database_back_writes_what_was_kept(ctx: PluginContext) -> None:
    """It writes the kept entries once the database answers again."""
    writer = PluginLogWriter(flush_size=5, max_buffer=8, flush_interval=3600)
    with database_away():
        for number in range(6):
            writer.log(ctx, "CONSOLE", "LOG", number)
    try:
        assert writer.flush() == 6
        assert PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id).count() == 6
    finally:
        PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id).delete()


def test_unwritable_entry_costs_only_itself(ctx: PluginContext) -> None:
    """It writes the good entries of a batch the database refuses, dropping (and counting) the bad one."""
    metrics = RecordingMetrics()
    set_metrics(metrics)
    writer = PluginLogWriter()
    try:
        writer.log(ctx, "CONSOLE", "LOG", "before")
        # A team id beyond the integer column makes the INSERT fail.
        writer.add(LogEntry(team_id=2**40, plugin_id=ctx.plugin_id, plugin_config_id=ctx.plugin_config_id, source="CONSOLE", type="LOG", message="bad"))
        writer.log(ctx, "CONSOLE", "LOG", "after")
        assert writer.flush() == 2
        messages = set(PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id).values_list("message", flat=True))
        assert messages == {"before", "after"}
        assert metrics.total("logs.entries_dropped") == 1
    finally:
        set_metrics(None)


def test_nul_character_is_replaced(ctx: PluginContext) -> None:
    """It replaces a NUL character (which Postgres text refuses) instead of losing the line."""
    writer = PluginLogWriter()
    writer.log(ctx, "CONSOLE", "LOG", "a\x00b")
    assert writer.flush() == 1
    assert PluginLogEntry.objects.get(plugin_config_id=ctx.plugin_config_id).message == "a\ufffdb"


@pytest.mark.django_db(transaction=True)
def test_background_flusher_writes_and_stops(ctx: PluginContext) -> None:
    """It writes buffered entries from its own thread within the interval, and close() stops it."""
    import time

    writer = PluginLogWriter(flush_interval=0.05)
    writer.start()
    try:
        writer.log(ctx, "CONSOLE", "WARN", "from the background")
        deadline = time.monotonic() + 5
        written = PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id, type="WARN")
        while not written.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert written.exists()
    finally:
        writer.close()
        PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id).delete()
    assert writer._thread is None


def test_overlong_entry_from_a_worker_is_cut(ctx: PluginContext) -> None:
    """It cuts an entry longer than the limit at write time too (a worker's lines are not trusted)."""
    writer = PluginLogWriter()
    writer.add(LogEntry.for_context(ctx, "CONSOLE", "LOG", "z" * (MAX_MESSAGE_CHARS * 3)))
    writer.flush()
    assert len(PluginLogEntry.objects.get(plugin_config_id=ctx.plugin_config_id).message) == MAX_MESSAGE_CHARS


def test_kafka_timestamp_format() -> None:
    """It formats times as the original's log-entry format, in UTC with milliseconds."""
    import json
    from datetime import datetime, timedelta, timezone

    from plugin_server.clickhouse.messages import plugin_log_entry_value

    moment = datetime(2021, 5, 17, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    entry = LogEntry(team_id=2, plugin_id=1, plugin_config_id=1, source="CONSOLE", type="LOG", message="m", timestamp=moment)
    assert json.loads(plugin_log_entry_value(entry))["timestamp"] == "2021-05-17 10:00:00.123"


@pytest.mark.kafka
def test_kafka_pipeline_produces_entries(ctx: PluginContext, kafka_consumer_config: dict[str, object]) -> None:
    """It sends entries to the plugin_log_entries topic keyed by id under KAFKA_ENABLED, writing no row."""
    import json
    import time

    from confluent_kafka import Consumer
    from django.test import override_settings

    bootstrap = str(kafka_consumer_config["bootstrap.servers"])
    consumer = Consumer(kafka_consumer_config)
    try:
        with override_settings(KAFKA_ENABLED=True, KAFKA_HOSTS=bootstrap):
            writer = PluginLogWriter()
            writer.log(ctx, "CONSOLE", "INFO", "amogus", {"a": 1})
            writer.add(LogEntry.for_context(ctx, "SYSTEM", "INFO", "Plugin loaded"))
            assert writer.flush() == 2
            assert writer.producer.flush(10) == 0
        # The topic is shared: read it all, keep this process's entries of this config.
        consumer.subscribe(["plugin_log_entries"])
        found: dict[str, dict[str, object]] = {}
        deadline = time.monotonic() + 20
        while len(found) < 2 and time.monotonic() < deadline:
            for message in consumer.consume(50, timeout=0.5):
                assert message.error() is None
                value = json.loads(message.value())
                if value["plugin_config_id"] == ctx.plugin_config_id and value["instance_id"] == str(SERVER_INSTANCE_ID):
                    assert message.key().decode() == value["id"]
                    found[value["message"]] = value
        assert set(found) == {'amogus {"a":1}', "Plugin loaded"}
        entry = found['amogus {"a":1}']
        assert (entry["source"], entry["type"], entry["team_id"], entry["plugin_id"]) == ("CONSOLE", "INFO", ctx.team_id, ctx.plugin_id)
        assert len(str(entry["timestamp"])) == len("2021-05-17 10:00:00.123")
        assert not PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id).exists()
    finally:
        consumer.close()


@pytest.fixture
def table_of_2021() -> Iterator[None]:
    """posthog_pluginlogentry as PostHog's 2021 schema has it: team_id NOT NULL, message indexed (btree).

    The DDL is undone with the test's transaction; the writer reads the table's shape afresh around it."""
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("DELETE FROM posthog_pluginlogentry WHERE team_id IS NULL")
        cursor.execute("ALTER TABLE posthog_pluginlogentry ALTER COLUMN team_id SET NOT NULL")
        cursor.execute("CREATE INDEX test_pluginlogentry_message ON posthog_pluginlogentry (message)")
    forget_log_table_shape()
    yield
    forget_log_table_shape()


def test_against_the_2021_table_long_messages_fit_its_index(ctx: PluginContext, table_of_2021: None) -> None:
    """A message too long for a btree entry is cut to MAX_INDEXED_MESSAGE_BYTES (UTF-8) and stored, not refused."""
    import random

    noise = "".join(random.choice("abcdefghijklmnopqrstuvwxyzÄÖÜ0123456789") for _ in range(MAX_MESSAGE_CHARS))
    assert store_log_entries([LogEntry.for_context(ctx, "CONSOLE", "LOG", noise)]) == 1
    stored = PluginLogEntry.objects.get(plugin_config_id=ctx.plugin_config_id).message
    assert len(stored.encode()) <= MAX_INDEXED_MESSAGE_BYTES and stored.endswith("(truncated)")
    assert noise.startswith(stored[: -len(" (truncated)") - 2])


def test_against_the_2021_table_a_config_without_a_team_is_not_logged_under_a_made_up_team(
    ctx: PluginContext, table_of_2021: None
) -> None:
    """team_id is NOT NULL there: the global config's entry is dropped (counted), the others are written."""
    no_team = PluginContext(plugin_config_id=ctx.plugin_config_id, plugin_id=ctx.plugin_id, team_id=None, plugin_name="p")
    metrics = RecordingMetrics()
    set_metrics(metrics)
    try:
        store_log_entries([LogEntry.for_context(no_team, "CONSOLE", "LOG", "global"), LogEntry.for_context(ctx, "CONSOLE", "LOG", "team")])
    finally:
        set_metrics(None)
    assert list(PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id).values_list("team_id", "message")) == [
        (ctx.team_id, "team")
    ]
    assert metrics.total("logs.entries_dropped") == 1
