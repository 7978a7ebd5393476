"""Plugin log entries (``posthog_pluginlogentry``), written in batches.

Kafka pipeline (``KAFKA_ENABLED``): the same entries are produced to the
``plugin_log_entries`` topic instead (key = entry id), for ClickHouse.

Every ``print``, ``meta.logger`` call, recorded error and load/unload message
of a plugin becomes one entry. Entries are
buffered by :class:`PluginLogWriter` and written with one multi-row INSERT
per flush, so a plugin that logs on every event costs no round trip per
event.

Tuning: ``flush_size`` entries trigger a flush in the caller (back-pressure
on the plugin that logs); call :meth:`PluginLogWriter.flush` at batch
boundaries, or start the background flusher for a time bound. The buffer
never holds more than ``max_buffer`` entries: when the database is away the
oldest entries are dropped and counted. Metrics: ``logs.entries_created``
(tagged source, team_id, plugin_id), ``logs.entries_dropped``,
``logs.flush_failed``.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from confluent_kafka import KafkaException
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection, transaction

from plugin_server.clickhouse.messages import PLUGIN_LOG_ENTRIES_TOPIC, plugin_log_entry_value
from plugin_server.config import get_config
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.metrics import LOGS_ENTRIES_CREATED, LOGS_ENTRIES_DROPPED, LOGS_FLUSH_FAILED, get_metrics
from plugin_server.models import PluginLogEntry, has_model
from plugin_server.service import Service
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.producer import MetaProducer
from plugin_server.plugins.meta.console import TRUNCATED_SUFFIX, cap_message, format_log_message

logger = logging.getLogger(__name__)

LogSource = Literal["SYSTEM", "PLUGIN", "CONSOLE"]
LogType = Literal["DEBUG", "LOG", "INFO", "WARN", "ERROR"]

# meta.logger / console method → entry type. ``print`` is ``log``.
LOG_METHODS: dict[str, LogType] = {
    "debug": "DEBUG",
    "log": "LOG",
    "info": "INFO",
    "warn": "WARN",
    "warning": "WARN",
    "error": "ERROR",
}

# One id per server start (per process: an ingestion process forked from the template takes its own,
# renew_server_instance_id). Read it through server_instance_id() where it may be read after that.
SERVER_INSTANCE_ID = uuidt()


def server_instance_id() -> uuid.UUID:
    """This process's server instance id."""
    return SERVER_INSTANCE_ID


def renew_server_instance_id() -> uuid.UUID:
    """A new instance id for this process (a forked ingestion process: plugin_server/ingestion/template.py)."""
    global SERVER_INSTANCE_ID
    SERVER_INSTANCE_ID = uuidt()
    return SERVER_INSTANCE_ID


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One row of ``posthog_pluginlogentry``, not yet written."""

    team_id: int | None
    plugin_id: int
    plugin_config_id: int
    source: LogSource
    type: LogType
    message: str
    timestamp: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    instance_id: uuid.UUID = field(default_factory=server_instance_id)
    # UUIDTs, as the original's: time-ordered, so the primary key index is appended to.
    id: uuid.UUID = field(default_factory=uuidt)

    @classmethod
    def for_context(
        cls, ctx: PluginContext, source: LogSource, type: LogType, message: str, timestamp: datetime | None = None
    ) -> LogEntry:
        return cls(
            team_id=ctx.team_id,
            plugin_id=ctx.plugin_id,
            plugin_config_id=ctx.plugin_config_id,
            source=source,
            type=type,
            message=message,
            timestamp=timestamp or datetime.now(timezone.utc),
        )


# A btree index entry holds at most ~2.7 kB: where the log table indexes
# ``message`` (PostHog 2021: ``TextField(db_index=True)``), a longer message
# would be refused, so stored messages are cut to this many UTF-8 bytes.
MAX_INDEXED_MESSAGE_BYTES = 2_000


@dataclass(frozen=True, slots=True)
class LogTableShape:
    """What the log table in the database accepts (not what a model says: a
    separate process on PostHog's 2021 database runs the stand-ins, whose
    declarations differ from PostHog's table)."""

    team_nullable: bool
    message_indexed: bool


_shapes: dict[str, LogTableShape] = {}


def log_table_shape() -> LogTableShape:
    """The log table's shape, read from the catalog once per process and database."""
    shape = _shapes.get(connection.alias)
    if shape is None:
        table = PluginLogEntry._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT is_nullable = 'YES' FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s AND column_name = 'team_id'",
                [table],
            )
            row = cursor.fetchone()
            cursor.execute(
                "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = to_regclass(%s) AND a.attname = 'message')",
                [table],
            )
            indexed = cursor.fetchone()
        shape = LogTableShape(team_nullable=bool(row and row[0]), message_indexed=bool(indexed and indexed[0]))
        _shapes[connection.alias] = shape
    return shape


def forget_log_table_shape() -> None:
    """Read the table's shape again on the next write (after a schema change)."""
    _shapes.clear()


def _cut_to_bytes(message: str, limit: int) -> str:
    encoded = message.encode("utf-8")
    if len(encoded) <= limit:
        return message
    suffix = TRUNCATED_SUFFIX.encode("utf-8")
    # errors="ignore" drops a character cut in half.
    return encoded[: limit - len(suffix)].decode("utf-8", errors="ignore") + TRUNCATED_SUFFIX


def _storable(message: str) -> str:
    # Postgres text cannot hold NUL: a plugin printing one must not poison the
    # batch. Lines come from untrusted workers too, so the length is capped here.
    message = cap_message(message).replace("\x00", "\ufffd")
    return _cut_to_bytes(message, MAX_INDEXED_MESSAGE_BYTES) if log_table_shape().message_indexed else message


def _storable_entries(entries: Sequence[LogEntry]) -> list[LogEntry]:
    """The entries the table can hold: a config without a team (a global one)
    logs with team NULL where the column allows it; where it does not (PostHog
    2021: a foreign key, NOT NULL) its entries are dropped and counted, never
    written under a team id that does not exist."""
    if log_table_shape().team_nullable:
        return list(entries)
    kept = [entry for entry in entries if entry.team_id is not None]
    if len(kept) < len(entries):
        logger.warning("plugin log: %d entries of configs without a team dropped (team_id is NOT NULL here)", len(entries) - len(kept))
        get_metrics().incr(LOGS_ENTRIES_DROPPED, len(entries) - len(kept))
    return kept


def insert_log_entries(entries: Sequence[LogEntry]) -> None:
    """Write entries with one INSERT whatever their number; raises DatabaseError.

    The rows travel as one JSON document expanded by Postgres: no model
    instances and no per-value parameter quoting, which cost more in Python
    than the database's own work.
    """
    entries = _storable_entries(entries)
    if not entries:
        return
    table = connection.ops.quote_name(PluginLogEntry._meta.db_table)
    rows = json.dumps(
        [
            [
                str(entry.id),
                entry.team_id,
                entry.plugin_id,
                entry.plugin_config_id,
                entry.timestamp.isoformat(),
                entry.source,
                entry.type,
                _storable(entry.message),
                str(entry.instance_id),
            ]
            for entry in entries
        ],
        ensure_ascii=False,
    )
    # A savepoint when called inside a transaction: a refused batch must not
    # poison the caller's transaction.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (id, team_id, plugin_id, plugin_config_id, timestamp, source, type, message, instance_id) "
            "SELECT (r->>0)::uuid, (r->>1)::int, (r->>2)::int, (r->>3)::int, (r->>4)::timestamptz, r->>5, r->>6, "
            "r->>7, (r->>8)::uuid FROM jsonb_array_elements(%s::jsonb) AS r",
            [rows],
        )
    _count_created(entries)


def produce_log_entries(producer: MetaProducer, entries: Sequence[LogEntry]) -> None:
    """Send entries to the ``plugin_log_entries`` topic (Kafka pipeline), keyed by id.

    Raises BufferError when the producer's queue is full, KafkaException on
    a producer error."""
    from plugin_server.kafka_client import topic_name

    topic = topic_name(PLUGIN_LOG_ENTRIES_TOPIC)
    for entry in entries:
        producer.produce(topic, str(entry.id), plugin_log_entry_value(entry))
    _count_created(entries)


def logs_go_to_kafka() -> bool:
    """Entries go to the ``plugin_log_entries`` topic: the Kafka pipeline is on,
    or the host keeps them in ClickHouse only (today's PostHog has no log table)."""
    return get_config().kafka_enabled or not has_model("PluginLogEntry")


_shared_producer: MetaProducer | None = None


def store_log_entries(entries: Sequence[LogEntry]) -> int:
    """Store entries now, by the configured path (Kafka or Postgres); returns how many.

    Never raises for a storage failure: the entries are then logged, counted
    as dropped, and the caller's own writes stand."""
    global _shared_producer
    try:
        if logs_go_to_kafka():
            _shared_producer = _shared_producer or MetaProducer()
            produce_log_entries(_shared_producer, entries)
        else:
            insert_log_entries(entries)
    except (DatabaseError, BufferError, KafkaException):
        logger.exception("plugin log: %d entries could not be stored", len(entries))
        get_metrics().incr(LOGS_ENTRIES_DROPPED, len(entries))
        return 0
    return len(entries)


def _count_created(entries: Sequence[LogEntry]) -> None:
    counts = collections.Counter((entry.source, entry.team_id, entry.plugin_id) for entry in entries)
    metrics = get_metrics()
    for (source, team_id, plugin_id), count in counts.items():
        metrics.incr(LOGS_ENTRIES_CREATED, count, {"source": source, "team_id": team_id or 0, "plugin_id": plugin_id})


class PluginLogWriter(Service):
    """Buffers plugin log entries and writes them in multi-row INSERTs (or to Kafka).

    Thread-safe: the meta host may serve several workers from several
    threads. Writing happens outside the lock, so a slow database delays only
    the thread that flushes.
    """

    def __init__(
        self,
        flush_size: int = 500,
        max_buffer: int = 5_000,
        flush_interval: float = 1.0,
        producer: MetaProducer | None = None,
    ) -> None:
        if not 0 < flush_size <= max_buffer:
            raise ValueError("flush_size must be between 1 and max_buffer")
        super().__init__("plugin log writer")
        self.producer = producer or MetaProducer()
        self.flush_size = flush_size
        self.max_buffer = max_buffer
        self.flush_interval = flush_interval
        self._buffer: collections.deque[LogEntry] = collections.deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._retry_at = 0.0

    def add(self, entry: LogEntry) -> None:
        """Buffer one entry; flushes in the caller once ``flush_size`` are waiting."""
        dropped = 0
        with self._lock:
            self._buffer.append(entry)
            while len(self._buffer) > self.max_buffer:
                self._buffer.popleft()
                dropped += 1
            # After a failed write, wait for the retry time: no flush storm on a dead database.
            due = len(self._buffer) >= self.flush_size and time.monotonic() >= self._retry_at
        if dropped:
            get_metrics().incr(LOGS_ENTRIES_DROPPED, dropped)
        if due:
            self.flush()

    def log(self, ctx: PluginContext, source: LogSource, type: LogType, *args: object) -> None:
        """Buffer one entry whose message is ``args`` formatted like the console."""
        self.add(LogEntry.for_context(ctx, source, type, format_log_message(args)))

    def pending(self) -> int:
        with self._lock:
            return len(self._buffer)

    def flush(self) -> int:
        """Write every buffered entry now; returns how many were written.

        Errors are logged and counted, never raised: a plugin's log must never
        stop ingestion. When the database is away the
        entries go back to the front of the buffer (bounded by ``max_buffer``)
        and inline flushes pause for ``flush_interval``. When the database
        refuses the batch itself, the entries are written one by one so one
        unwritable entry costs only itself.
        """
        with self._flush_lock:
            with self._lock:
                entries = list(self._buffer)
                self._buffer.clear()
            if not entries:
                return 0
            try:
                if logs_go_to_kafka():
                    produce_log_entries(self.producer, entries)
                else:
                    insert_log_entries(entries)
            except (OperationalError, InterfaceError, BufferError, KafkaException):
                logger.exception("plugin log: storage unavailable, keeping %d entries", len(entries))
                get_metrics().incr(LOGS_FLUSH_FAILED)
                self._requeue(entries)
                self._retry_at = time.monotonic() + self.flush_interval
                return 0
            except DatabaseError:
                logger.exception("plugin log: batch of %d entries refused, writing one by one", len(entries))
                get_metrics().incr(LOGS_FLUSH_FAILED)
                return self._insert_one_by_one(entries)
            self._retry_at = 0.0
            return len(entries)

    def _requeue(self, entries: list[LogEntry]) -> None:
        with self._lock:
            room = self.max_buffer - len(self._buffer)
            kept = entries[-room:] if room > 0 else []
            self._buffer.extendleft(reversed(kept))
        if len(entries) > len(kept):
            get_metrics().incr(LOGS_ENTRIES_DROPPED, len(entries) - len(kept))

    def _insert_one_by_one(self, entries: list[LogEntry]) -> int:
        written = 0
        for entry in entries:
            try:
                insert_log_entries([entry])
            except DatabaseError:
                logger.exception(
                    "plugin log: entry dropped", extra={"plugin_config_id": entry.plugin_config_id, "team_id": entry.team_id}
                )
                get_metrics().incr(LOGS_ENTRIES_DROPPED)
            else:
                written += 1
        return written

    def start(self) -> None:
        """Flush every ``flush_interval`` seconds on the service's thread until :meth:`close`."""
        if self.is_alive():
            return
        super().start()

    def run(self) -> None:
        try:
            while not self.sleep(self.flush_interval):
                self.flush()
                # This thread has its own connection; drop it if it went stale.
                close_old_connections()
        finally:
            connection.close()

    def close(self) -> None:
        """Stop the background flusher (if any) and write what is left."""
        if self.is_alive():
            self.stop(timeout=10)
        self.flush()
        self.producer.flush()
