"""The ClickHouse writer: the clickhouse_* topics into the plain layout's tables, at least once, idempotently.

Built on sentry-arroyo: one :class:`~arroyo.processing.StreamProcessor`
subscribed to every topic at once (a librdkafka regex subscription,
``^(topic|topic|...)$``), running

    Reduce (decode each message into rows; batch by count or time)
      → RunTask (dead-letter the unreadable, then insert each table's rows)
      → CommitOffsets (IMMEDIATE: commit the batch's offsets synchronously).

So offsets are committed only after the rows are in ClickHouse. A crash
between the insert and the commit re-delivers the batch; the rows are
inserted again with the same ``_timestamp`` (the Kafka message time) and
``_offset``, and every table is a ReplacingMergeTree keyed by what the row
stores, so ``FINAL`` reads show it once (docs/clickhouse.md).

A message that cannot become a row (not JSON, a field missing or of the
wrong type, bad protobuf) is produced to the dead-letter topic with the
reason in its headers, logged and counted, inside the batch that read it
(before that batch's commit), so it never stops the writer and is never
lost. Arroyo's own dead-letter path is not used: it forwards a rejected
message's offset past the batch still being accumulated, which could commit
offsets of rows not yet inserted.

A table insert that fails for the connection or the server (ClickHouse away,
a missing table, no space) is retried as it is, with back-off, until it
succeeds or the writer is asked to stop: nothing is committed meanwhile and
nothing is dead-lettered. One that fails for its rows (a value that does not
fit its column, caught by the client; too many partitions in one block) is
split in halves until the refused rows are alone, and those are
dead-lettered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Final

from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.commit import IMMEDIATE
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, ProcessingStrategy, ProcessingStrategyFactory, Reduce, RunTask
from arroyo.types import BaseValue, BrokerValue, Commit, Message, Partition, Topic
from confluent_kafka import KafkaError, KafkaException, Producer

from plugin_server.clickhouse.messages import TOPIC_FORMATS, BadMessage, Row, TopicFormat, compact_json
from plugin_server.metrics import (
    CLICKHOUSE_WRITER_DEAD_LETTERS,
    CLICKHOUSE_WRITER_INSERT_RETRIES,
    CLICKHOUSE_WRITER_INSERT_TIME,
    CLICKHOUSE_WRITER_ROWS,
    QUERY_CLICKHOUSE,
    TOTAL_SUFFIX,
    get_metrics,
)

if TYPE_CHECKING:
    from clickhouse_driver import Client

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL: Final = 10.0  # seconds between progress lines
# A dead letter the broker refuses as too large goes again with its value cut to this.
TRUNCATED_VALUE_BYTES: Final = 100_000
TOO_LARGE_ERRORS: Final = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
RETRY_BACKOFF_MAX: Final = 30.0


@dataclass(frozen=True, slots=True)
class WriterOptions:
    """What one writer reads, where it writes, and how it batches."""

    kafka_hosts: str
    group_id: str
    database: str
    dead_letter_topic: str
    batch_size: int = 50_000
    batch_time: float = 2.0  # seconds
    # Topic name → its format; the defaults are the clickhouse_* topics by their own names.
    topics: Mapping[str, TopicFormat] = field(default_factory=lambda: {f.topic: f for f in TOPIC_FORMATS})
    consumer_overrides: Mapping[str, Any] = field(default_factory=dict)

    def subscription(self) -> str:
        """The regex subscription naming exactly the topics (librdkafka's regex syntax, anchored)."""
        names = sorted(name.replace(".", "\\.") for name in self.topics)
        return "^(" + "|".join(names) + ")$"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the writer could not turn into rows (or rows ClickHouse refused), and why."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    reason: str
    truncated_from: int | None = None  # the value's size when it had to be cut short for the dead-letter topic


@dataclass(slots=True)
class WriterBatch:
    """What one batch of messages became: rows per table (with ``_timestamp``, ``_offset``) and dead letters."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    origins: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # (topic, partition, offset) per row
    dead_letters: list[DeadLetter] = field(default_factory=list)
    messages: int = 0


EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _time_units(column_type: str) -> timedelta | None:
    """The unit a raw integer of this column type counts (None: not a date-time column).

    clickhouse-driver takes date-times as raw integers as they are, where an
    aware ``datetime`` costs it a time-zone conversion per value (measured:
    an insert of aware date-times took about four times the client CPU)."""
    if column_type.startswith("DateTime64("):
        return timedelta(microseconds=10 ** (6 - int(column_type[len("DateTime64(") :].split(",")[0].rstrip(")"))))
    if column_type.startswith("DateTime"):
        return timedelta(seconds=1)
    return None


def row_converter(column_types: Sequence[str]) -> Callable[[Row], Row]:
    """Turns the date-times of a row into the raw integers of their columns' types."""
    units = [(index, unit) for index, kind in enumerate(column_types) if (unit := _time_units(kind)) is not None]

    def convert(row: Row) -> Row:
        values = list(row)
        for index, unit in units:
            values[index] = (values[index] - EPOCH) // unit
        return tuple(values)

    return convert


def _utc(moment: datetime) -> datetime:
    # arroyo gives the Kafka timestamp as a naive UTC datetime.
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


class Accumulator:
    """Decodes one message into the batch (the Reduce step's accumulator)."""

    def __init__(self, topics: Mapping[str, TopicFormat]) -> None:
        self._topics = topics

    def __call__(self, batch: WriterBatch, value: BaseValue[KafkaPayload]) -> WriterBatch:
        assert isinstance(value, BrokerValue), "the writer reads straight from Kafka"
        batch.messages += 1
        partition, offset = value.partition, value.offset
        payload = value.payload
        topic = partition.topic.name
        topic_format = self._topics.get(topic)
        reason = ""
        if topic_format is None:
            reason = f"no format for topic {topic!r}"
        elif payload.value is None:
            reason = "empty value"
        else:
            try:
                rows = topic_format.rows(payload.value)
            except BadMessage as error:
                reason = str(error)
            except Exception as error:  # noqa: BLE001 - a decoder's own failure must not stop the writer on one message
                logger.exception("clickhouse writer: decoding %s[%d]@%d failed", topic, partition.index, offset)
                reason = f"could not decode: {type(error).__name__}: {error}"
        if reason or topic_format is None:
            batch.dead_letters.append(DeadLetter(topic, partition.index, offset, payload.key, payload.value or b"", reason))
            return batch
        stamp = _utc(value.timestamp)
        table_rows = batch.rows.setdefault(topic_format.table, [])
        origins = batch.origins.setdefault(topic_format.table, [])
        for row in rows:
            table_rows.append((*row, stamp, offset))
            origins.append((topic, partition.index, offset))
        return batch


# ClickHouse's TOO_MANY_PARTS, also "too many partitions for single INSERT
# block": caused by the rows (timestamps spread over many partitions), so
# the insert is split rather than retried as it is.
TOO_MANY_PARTS: Final = 252


def _is_retriable(error: BaseException) -> bool:
    """True for a failure of the connection or the server (retry the insert as it is), False for one of the data.

    Over the native protocol the rows are serialised here: a row that does
    not fit its column fails in the client (TypeError, struct.error,
    TypeMismatchError ...), before the server sees anything. What the server
    refuses (a missing table, no space, memory, permissions, read-only) is
    about the server, not the rows, and must not dead-letter them."""
    from clickhouse_driver.errors import NetworkError, ServerException, SocketTimeoutError

    if isinstance(error, ServerException):
        return bool(error.code != TOO_MANY_PARTS)
    return isinstance(error, (NetworkError, SocketTimeoutError, OSError, EOFError))


class BatchInserter:
    """Writes one batch: dead letters first (acknowledged by the broker), then one insert per table."""

    def __init__(
        self,
        client: Client,
        producer: Producer,
        options: WriterOptions,
        stopping: threading.Event,
        progress: Progress,
    ) -> None:
        self._client = client
        self._producer = producer
        self._options = options
        self._stopping = stopping
        self._progress = progress
        self._columns = {f.table: f.columns for f in options.topics.values()}
        self._converters: dict[str, Callable[[Row], Row]] = {}

    def __call__(self, message: Message[WriterBatch]) -> WriterBatch:
        batch = message.payload
        inserted: Counter[str] = Counter()
        for table, rows in batch.rows.items():
            refused = self._insert(table, rows, batch.origins[table])
            inserted[table] += len(rows) - len(refused)
            batch.dead_letters.extend(refused)
        self._dead_letter(batch.dead_letters)
        self._progress.add(batch.messages, inserted, len(batch.dead_letters))
        return batch

    def _converter(self, table: str) -> Callable[[Row], Row]:
        """The table's row converter, from its column types as the server has them (asked once)."""
        converter = self._converters.get(table)
        if converter is None:
            described = {row[0]: row[1] for row in self._client.execute(f"DESCRIBE TABLE {self._options.database}.{table}")}
            names = [*self._columns[table], "_timestamp", "_offset"]
            converter = self._converters[table] = row_converter([described.get(name, "") for name in names])
        return converter

    def _statement(self, table: str) -> str:
        columns = ", ".join([*self._columns[table], "_timestamp", "_offset"])
        return f"INSERT INTO {self._options.database}.{table} ({columns}) VALUES"

    def _insert(self, table: str, rows: list[Row], origins: list[tuple[str, int, int]]) -> list[DeadLetter]:
        """Insert ``rows``; the rows the server refuses for their data come back as dead letters."""
        backoff = 0.5
        while True:
            started = time.monotonic()
            try:
                convert = self._converter(table)
                self._client.execute(self._statement(table), [convert(row) for row in rows])
            except Exception as error:  # noqa: BLE001 - a server or network failure is retried, a data one splits
                if _is_retriable(error):
                    if self._stopping.is_set():
                        raise  # nothing committed: the batch comes back after a restart
                    logger.error(
                        "clickhouse writer: insert into %s failed, retrying in %.1fs: %s",
                        table, backoff, str(error).split("Stack trace")[0].strip(),
                    )
                    get_metrics().incr(CLICKHOUSE_WRITER_INSERT_RETRIES)
                    self._client.disconnect()
                    time.sleep(backoff)
                    backoff = min(backoff * 2, RETRY_BACKOFF_MAX)
                    continue
                return self._split(table, rows, origins, error)
            elapsed = (time.monotonic() - started) * 1000
            metrics = get_metrics()
            metrics.timing(CLICKHOUSE_WRITER_INSERT_TIME, elapsed, {"table": table})
            metrics.incr(CLICKHOUSE_WRITER_ROWS, len(rows), {"table": table})
            metrics.timing(QUERY_CLICKHOUSE, elapsed)
            metrics.incr(QUERY_CLICKHOUSE + TOTAL_SUFFIX)
            return []

    def _split(
        self, table: str, rows: list[Row], origins: list[tuple[str, int, int]], error: BaseException
    ) -> list[DeadLetter]:
        if len(rows) == 1:
            topic, partition, offset = origins[0]
            value = compact_json({"table": table, "row": [str(item) for item in rows[0]]}).encode()
            return [DeadLetter(topic, partition, offset, None, value, f"ClickHouse refused the row: {error}")]
        logger.warning("clickhouse writer: %s refused %d rows (%s): splitting the insert", table, len(rows), error)
        half = len(rows) // 2
        return self._insert(table, rows[:half], origins[:half]) + self._insert(table, rows[half:], origins[half:])

    def _dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Produce the letters and wait for the broker; one too large for it goes again, its value cut short."""
        too_large = self._produce_letters(letters)
        if too_large:
            cut = [
                replace(letter, value=letter.value[:TRUNCATED_VALUE_BYTES], truncated_from=len(letter.value))
                for letter in too_large
            ]
            if self._produce_letters(cut, count=False):
                raise RuntimeError("dead-letter topic refused even the cut-short messages as too large")

    def _produce_letters(self, letters: Sequence[DeadLetter], count: bool = True) -> list[DeadLetter]:
        """The letters the broker refused as too large; raises on any other failure (nothing is committed)."""
        if not letters:
            return []
        failures: list[KafkaError] = []
        too_large: list[DeadLetter] = []

        def on_delivery(letter: DeadLetter) -> Callable[[KafkaError | None, object], None]:
            def delivered(error: KafkaError | None, _message: object) -> None:
                if error is not None and error.code() in TOO_LARGE_ERRORS:
                    too_large.append(letter)
                elif error is not None:
                    failures.append(error)

            return delivered

        for letter in letters:
            if count:
                logger.warning(
                    "clickhouse writer: dead-lettering %s[%d]@%d: %s", letter.topic, letter.partition, letter.offset, letter.reason
                )
                get_metrics().incr(CLICKHOUSE_WRITER_DEAD_LETTERS, 1, {"topic": letter.topic})
            headers: list[tuple[str, str | bytes]] = [
                ("reason", letter.reason.encode()),
                ("original_topic", letter.topic.encode()),
                ("original_partition", str(letter.partition).encode()),
                ("original_offset", str(letter.offset).encode()),
            ]
            if letter.truncated_from is not None:
                headers.append(("truncated_from_bytes", str(letter.truncated_from).encode()))
            while True:
                try:
                    self._producer.produce(
                        self._options.dead_letter_topic, value=letter.value, key=letter.key, headers=headers,
                        on_delivery=on_delivery(letter),
                    )
                except BufferError:
                    self._producer.poll(0.5)
                    continue
                except KafkaException as error:
                    # The client's own size limit refuses it before sending.
                    reported = error.args[0] if error.args else None
                    if not isinstance(reported, KafkaError) or reported.code() not in TOO_LARGE_ERRORS:
                        raise
                    too_large.append(letter)
                break
            self._producer.poll(0)
        remaining = self._producer.flush(60)
        if remaining or failures:
            # Not committed: the batch comes back and is dead-lettered again.
            raise RuntimeError(f"dead-letter topic did not take {remaining + len(failures)} message(s): {failures[:1]}")
        return too_large


class Progress:
    """Counts what was written and logs a line every ``interval`` seconds."""

    def __init__(self, interval: float = PROGRESS_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._since = clock()
        self.messages = 0
        self.rows: Counter[str] = Counter()
        self.dead_letters = 0
        self._window_messages = 0

    def add(self, messages: int, rows: Counter[str], dead_letters: int) -> None:
        self.messages += messages
        self._window_messages += messages
        self.rows.update(rows)
        self.dead_letters += dead_letters
        now = self._clock()
        if now - self._since >= self._interval:
            self.log(now)

    def log(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        elapsed = max(now - self._since, 1e-9)
        tables = ", ".join(f"{table} {count}" for table, count in sorted(self.rows.items())) or "nothing"
        logger.info(
            "clickhouse writer: %d messages (%.0f/s over %.0fs); rows so far: %s; dead-lettered %d",
            self.messages,
            self._window_messages / elapsed,
            elapsed,
            tables,
            self.dead_letters,
        )
        self._since = now
        self._window_messages = 0


class WriterStrategyFactory(ProcessingStrategyFactory[KafkaPayload]):
    """Builds Reduce → RunTask(insert) → CommitOffsets for each assignment."""

    def __init__(self, options: WriterOptions, inserter: BatchInserter) -> None:
        self._options = options
        self._inserter = inserter
        self._accumulate = Accumulator(options.topics)

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        insert: ProcessingStrategy[WriterBatch] = RunTask(self._inserter, CommitOffsets(commit))
        return Reduce[KafkaPayload, WriterBatch](
            self._options.batch_size,
            self._options.batch_time,
            self._accumulate,
            WriterBatch,
            insert,
        )


class ClickHouseWriter:
    """One writer process's consumer: :meth:`run` until :meth:`stop` (safe from a signal handler)."""

    def __init__(self, options: WriterOptions, client: Client, producer: Producer | None = None) -> None:
        self.options = options
        self.stopping = threading.Event()
        self.progress = Progress()
        self._producer = producer or Producer({"bootstrap.servers": options.kafka_hosts, "linger.ms": 20})
        consumer_config = build_kafka_consumer_configuration(
            {},
            bootstrap_servers=options.kafka_hosts.split(","),
            group_id=options.group_id,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            # librdkafka's own prefetch (arroyo lowers it to 10,000 messages, which
            # starves a large batch: about 15 times slower on Tansu); memory stays
            # bounded by queued.max.messages.kbytes (arroyo's 50 MB).
            queued_min_messages=100_000,
            override_params={
                # New topics matching the subscription are seen within this time.
                "topic.metadata.refresh.interval.ms": 10_000,
                "fetch.wait.max.ms": 100,
                **options.consumer_overrides,
            },
        )
        self._consumer = KafkaConsumer(consumer_config)
        inserter = BatchInserter(client, self._producer, options, self.stopping, self.progress)
        self._processor = StreamProcessor(
            self._consumer,
            Topic(options.subscription()),
            WriterStrategyFactory(options, inserter),
            commit_policy=IMMEDIATE,
        )

    def run(self) -> None:
        """Consume until stopped; the batch in hand is inserted and committed before returning."""
        logger.info(
            "clickhouse writer: group %s reading %s into %s", self.options.group_id, ", ".join(sorted(self.options.topics)),
            self.options.database,
        )
        try:
            self._processor.run()
        finally:
            self._producer.flush(30)
            self.progress.log()

    def stop(self) -> None:
        """Ask :meth:`run` to finish its batch, commit, leave the group and return."""
        self.stopping.set()
        self._processor.signal_shutdown()
