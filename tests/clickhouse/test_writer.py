"""run_clickhouse_writer against the real broker (Tansu) and ClickHouse: batches in, offsets committed after.

Every test has its own topics (a unique prefix before the clickhouse_* names),
consumer group and ClickHouse database. Tansu answers a group join after half
the session timeout, so writers here use a 2 s session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings
from django.core.management import call_command

from plugin_server.clickhouse import messages
from plugin_server.clickhouse.writer import BatchInserter, ClickHouseWriter, Progress, WriterBatch, WriterOptions
from plugin_server.ingestion.person_batch import DistinctIdChange
from plugin_server.ingestion.person_store import PersonRecord
from plugin_server.metrics import RecordingMetrics
from plugin_server.plugins.meta.logger import LogEntry
from plugin_server.sinks.base import PreparedEvent, PreparedRecording
from tests.manage_process import wait_for

if TYPE_CHECKING:
    from clickhouse_driver import Client

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

ROOT = Path(__file__).resolve().parents[2]
FAST_GROUP = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}
START = datetime(2021, 5, 17, 9, 0, 0, tzinfo=timezone.utc)


def make_event(number: int, team_id: int = 2) -> PreparedEvent:
    return PreparedEvent(
        uuid=str(uuid.UUID(int=number + 1)),
        team_id=team_id,
        distinct_id=f"user-{number % 50}",
        event="$pageview",
        properties={"n": number, "$current_url": "https://example.com/ö"},
        timestamp=START + timedelta(milliseconds=number * 7),
    )


class Topics:
    """This test's topics: the clickhouse_* names after a unique prefix, created with partitions."""

    def __init__(self, bootstrap: str, prefix: str, partitions: int = 3) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.dead_letter = prefix + "dead_letter"
        names = [prefix + topic_format.topic for topic_format in messages.TOPIC_FORMATS] + [self.dead_letter]
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.create_topics([NewTopic(name, partitions, 1) for name in names]).values():
            future.result(30)
        wait_for(lambda: set(names) <= set(admin.list_topics(timeout=10).topics), 30, "topics to exist")
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def name(self, topic: str) -> str:
        return self.prefix + topic

    def produce(self, topic: str, value: bytes, key: str | None = None) -> None:
        while True:
            try:
                self.producer.produce(self.name(topic), value, key)
                return
            except BufferError:
                self.producer.poll(0.5)

    def flush(self) -> None:
        assert self.producer.flush(60) == 0

    def produce_events(self, total: int) -> None:
        """``make_event(0 .. total-1)`` on the events topic, keyed by uuid, flushed."""
        for number in range(total):
            event = make_event(number)
            self.produce(messages.EVENTS_TOPIC, messages.event_value(event), event.uuid)
        self.flush()

    def options(self, database: str, group: str, **overrides: Any) -> WriterOptions:
        values: dict[str, Any] = {
            "kafka_hosts": self.bootstrap,
            "group_id": group,
            "database": database,
            "dead_letter_topic": self.dead_letter,
            "batch_size": 1000,
            "batch_time": 0.3,
            "topics": {self.name(f.topic): f for f in messages.TOPIC_FORMATS},
            "consumer_overrides": FAST_GROUP,
        }
        values.update(overrides)
        return WriterOptions(**values)

    def committed(self, group: str, topic: str) -> int:
        """Offsets the group committed on the topic, summed over partitions."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, **FAST_GROUP})
        try:
            partitions = consumer.list_topics(self.name(topic), timeout=10).topics[self.name(topic)].partitions
            committed = consumer.committed([TopicPartition(self.name(topic), p) for p in partitions], timeout=10)
            return sum(max(tp.offset, 0) for tp in committed)
        finally:
            consumer.close()

    def read_all(self, topic_name: str, expected: int) -> list[Any]:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                             "auto.offset.reset": "earliest", **FAST_GROUP})
        found: list[Any] = []
        try:
            consumer.subscribe([topic_name])
            deadline = time.monotonic() + 30
            while len(found) < expected and time.monotonic() < deadline:
                for message in consumer.consume(100, timeout=0.5):
                    assert message.error() is None
                    found.append(message)
        finally:
            consumer.close()
        return found


def stored_events(client: Client) -> int:
    """Rows in ``events``, copies of a re-inserted event included."""
    return int(client.execute("SELECT count() FROM events")[0][0])


@pytest.fixture
def topics(kafka_bootstrap: str, unique_name: str) -> Iterator[Topics]:
    yield Topics(kafka_bootstrap, unique_name.replace("-", "_") + "_")


@pytest.fixture
def database(clickhouse_client: Client) -> str:
    name = str(clickhouse_client.connection.database)
    call_command("setup_clickhouse", database=name, stdout=StringIO())
    return name


class WriterThread:
    """A writer in this process, on a thread, stopped (gracefully) at the end."""

    def __init__(self, options: WriterOptions) -> None:
        from plugin_server.clickhouse.client import make_client

        self.client = make_client(database=options.database)
        self.writer = ClickHouseWriter(options, self.client)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.writer.run()
        except BaseException as error:  # noqa: BLE001 - reported by stop()
            self.error = error

    def stop(self) -> None:
        self.writer.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the writer did not stop"
        self.client.disconnect()
        if self.error is not None:
            raise self.error


def test_every_topic_is_inserted_and_bad_messages_are_dead_lettered_with_their_reason(
    topics: Topics, database: str, clickhouse_client: Client, unique_name: str, recording_metrics: RecordingMetrics
) -> None:
    events = [make_event(number) for number in range(30)]
    for event in events:
        topics.produce(messages.EVENTS_TOPIC, messages.event_value(event), event.uuid)
    person = PersonRecord(17, str(uuid.UUID(int=900)), 2, START, {"plan": "pro"}, True)
    topics.produce(messages.PERSON_TOPIC, messages.person_value(person, created=True))
    topics.produce(messages.PERSON_UNIQUE_ID_TOPIC, messages.person_distinct_id_value(DistinctIdChange(5, 2, "user-1", person.uuid)))
    recording = PreparedRecording(str(uuid.UUID(int=901)), 2, "user-1", "s1", {"type": 2}, START)
    topics.produce(messages.SESSION_RECORDING_EVENTS_TOPIC, messages.recording_value(recording), recording.uuid)
    entry = LogEntry(team_id=2, plugin_id=3, plugin_config_id=4, source="CONSOLE", type="INFO", message="amogus", timestamp=START)
    topics.produce(messages.PLUGIN_LOG_ENTRIES_TOPIC, messages.plugin_log_entry_value(entry), str(entry.id))
    topics.produce(messages.PERSON_TOPIC, b"not json")
    topics.produce(messages.EVENTS_TOPIC, b"\x05ab", "broken")
    topics.flush()

    writer = WriterThread(topics.options(database, unique_name))
    try:
        wait_for(lambda: clickhouse_client.execute("SELECT count() FROM events")[0][0] == 30, 60, "the events")
        wait_for(lambda: clickhouse_client.execute("SELECT count() FROM plugin_log_entries")[0][0] == 1, 30, "the log entry")
        wait_for(lambda: topics.committed(unique_name, messages.EVENTS_TOPIC) == 31, 30, "the events' offsets, bad one too")
    finally:
        writer.stop()

    stored = clickhouse_client.execute("SELECT uuid, event, properties, timestamp, team_id, distinct_id, elements_chain FROM events FINAL ORDER BY uuid")
    assert [row[0] for row in stored] == [uuid.UUID(event.uuid) for event in events]
    assert stored[3][2] == '{"n":3,"$current_url":"https://example.com/ö"}'
    assert stored[3][5] == "user-3" and stored[3][4] == 2
    assert stored[3][3].replace(tzinfo=timezone.utc, microsecond=0) == events[3].timestamp.replace(microsecond=0)
    assert clickhouse_client.execute("SELECT id, team_id, properties, is_identified FROM person FINAL") == [
        (uuid.UUID(person.uuid), 2, '{"plan":"pro"}', 1)
    ]
    assert clickhouse_client.execute("SELECT id, distinct_id, person_id FROM person_distinct_id FINAL") == [
        (5, "user-1", uuid.UUID(person.uuid))
    ]
    assert clickhouse_client.execute("SELECT session_id, snapshot_data FROM session_recording_events") == [("s1", '{"type":2}')]
    assert clickhouse_client.execute("SELECT message, type, plugin_config_id FROM plugin_log_entries") == [("amogus", "INFO", 4)]
    assert topics.committed(unique_name, messages.PERSON_TOPIC) == 2

    letters = topics.read_all(topics.dead_letter, 2)
    reasons = {message.value(): dict(message.headers())["reason"].decode() for message in letters}
    assert reasons == {b"not json": reasons[b"not json"], b"\x05ab": reasons[b"\x05ab"]}
    assert reasons[b"not json"].startswith("value is not JSON")
    assert "5-byte message but 2 bytes left" in reasons[b"\x05ab"]
    broken = next(message for message in letters if message.value() == b"\x05ab")
    assert broken.key() == b"broken" and dict(broken.headers())["original_topic"] == topics.name(messages.EVENTS_TOPIC).encode()
    assert recording_metrics.total("clickhouse_writer.dead_letters") == 2
    assert recording_metrics.total("clickhouse_writer.rows") == 34
    assert recording_metrics.total("query.clickhouse.total") >= 5  # one insert per table at least


def test_a_row_clickhouse_refuses_is_dead_lettered_alone_and_the_rest_inserted(
    topics: Topics, database: str, clickhouse_client: Client, unique_name: str
) -> None:
    from plugin_server.clickhouse.client import make_client

    good = messages.event_rows(messages.event_value(make_event(1)))[0]
    other = messages.event_rows(messages.event_value(make_event(2)))[0]
    bad = (*good[:4], "not a team id", *good[5:])  # the Int64 column refuses a text
    stamp = datetime.now(timezone.utc)
    batch = WriterBatch(
        rows={"events": [(*good, stamp, 1), (*bad, stamp, 2), (*other, stamp, 3)]},
        origins={"events": [("t", 0, 1), ("t", 0, 2), ("t", 0, 3)]},
        messages=3,
    )
    client = make_client(database=database)
    inserter = BatchInserter(client, topics.producer, topics.options(database, unique_name), threading.Event(), Progress())
    from arroyo.types import Message, Value

    inserter(Message(Value(batch, {})))
    client.disconnect()
    assert sorted(row[0] for row in clickhouse_client.execute("SELECT uuid FROM events")) == [good[0], other[0]]
    [letter] = topics.read_all(topics.dead_letter, 1)
    headers = dict(letter.headers())
    assert headers["reason"].startswith(b"ClickHouse refused the row") and headers["original_offset"] == b"2"


def start_writer_process(topics: Topics, database: str, group: str, *extra: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings.base",
        "KAFKA_HOSTS": topics.bootstrap,
        "CLICKHOUSE_HOST": str(settings.CLICKHOUSE_HOST),
        "CLICKHOUSE_PORT": str(settings.CLICKHOUSE_PORT),
        "CLICKHOUSE_WRITER_DEAD_LETTER_TOPIC": "dead_letter",
        "KAFKA_PREFIX": topics.prefix,  # the writer reads the topics the server produces to
        "LOG_LEVEL": "info",
    }
    command = [
        sys.executable, "manage.py", "run_clickhouse_writer", "--database", database,
        "--group", group, "--session-timeout-ms", "2000", *extra,
    ]
    output = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - the child holds it
    return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_loses_nothing_and_final_shows_each_event_once(
    topics: Topics, database: str, clickhouse_client: Client, unique_name: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    total = 20_000
    topics.produce_events(total)

    def stored() -> int:
        return stored_events(clickhouse_client)

    first = start_writer_process(topics, database, unique_name, "--batch-size", "700", "--batch-ms", "100")
    processes.append(first)
    wait_for(lambda: stored() > 0, 90, "the first inserts", first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    at_kill = stored()
    assert at_kill < total, "the writer finished before it could be killed: make the stream longer"

    second = start_writer_process(topics, database, unique_name, "--batch-size", "5000", "--batch-ms", "200")
    processes.append(second)
    wait_for(lambda: topics.committed(unique_name, messages.EVENTS_TOPIC) == total, 180, "every offset committed", second)
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0

    final = clickhouse_client.execute("SELECT count(), uniqExact(uuid) FROM events FINAL")[0]
    assert final == (total, total)
    raw = stored()
    assert raw >= total  # rows inserted before the kill but not committed were inserted again
    expected = Counter(str(uuid.UUID(int=number + 1)) for number in range(total))
    seen = Counter(str(row[0]) for row in clickhouse_client.execute("SELECT uuid FROM events FINAL"))
    assert seen == expected


@pytest.mark.slow
def test_sigterm_finishes_the_batch_commits_and_logs_progress(
    topics: Topics,
    database: str,
    clickhouse_client: Client,
    unique_name: str,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    topics.produce_events(500)
    # A batch longer than the test: only SIGTERM can make it insert.
    log = tmp_path / "writer.log"
    writer = start_writer_process(topics, database, unique_name, "--batch-size", "100000", "--batch-ms", "600000", log=log)
    processes.append(writer)
    wait_for(lambda: "New partitions assigned: {Partition" in log.read_text(), 90, "the partitions", writer)
    time.sleep(3)  # read, but nothing inserted yet
    assert clickhouse_client.execute("SELECT count() FROM events")[0][0] == 0
    writer.send_signal(signal.SIGTERM)
    assert writer.wait(60) == 0, log.read_text()[-2000:]
    assert clickhouse_client.execute("SELECT count() FROM events FINAL")[0][0] == 500
    assert topics.committed(unique_name, messages.EVENTS_TOPIC) == 500
    text = log.read_text()
    assert "SIGTERM received" in text and "clickhouse writer: 500 messages" in text


def test_progress_line_reports_rates_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    progress = Progress(interval=10, clock=lambda: now[0])
    progress.add(400, Counter({"events": 390}), 10)
    assert not caplog.records
    now[0] = 110.0
    with caplog.at_level("INFO", logger="plugin_server.clickhouse.writer"):
        progress.add(100, Counter({"events": 100, "person": 2}), 0)
    assert caplog.messages == ["clickhouse writer: 500 messages (50/s over 10s); rows so far: events 490, person 2; dead-lettered 10"]


@pytest.mark.slow
def test_two_writers_share_the_partitions_and_one_killed_hands_them_over(
    topics: Topics,
    database: str,
    clickhouse_client: Client,
    unique_name: str,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    total = 20_000
    topics.produce_events(total)
    slow = ("--batch-size", "500", "--batch-ms", "100")
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = start_writer_process(topics, database, unique_name, *slow, log=logs[0])
    second = start_writer_process(topics, database, unique_name, *slow, log=logs[1])
    processes.extend([first, second])
    # Every topic has 3 partitions: each member of the group gets some (Tansu's
    # DescribeGroups lists no members, so the writers' own logs tell).
    for log, process in zip(logs, (first, second)):
        wait_for(lambda: "New partitions assigned: {Partition" in log.read_text(), 120, f"partitions for {log.stem}", process)
    wait_for(lambda: stored_events(clickhouse_client) > 0, 120, "the first inserts", first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    assert stored_events(clickhouse_client) < total, "the writers finished before one could be killed: make the stream longer"
    wait_for(lambda: topics.committed(unique_name, messages.EVENTS_TOPIC) == total, 180, "every offset committed", second)
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0
    assert clickhouse_client.execute("SELECT count(), uniqExact(uuid) FROM events FINAL")[0] == (total, total)


def test_a_missing_table_is_waited_for_not_dead_lettered(
    topics: Topics, database: str, clickhouse_client: Client, unique_name: str
) -> None:
    """A server-side failure (here: no such table) is retried as it is; once the table is back the rows go in."""
    from arroyo.types import Message, Value

    from plugin_server.clickhouse.client import make_client

    rows = messages.event_rows(messages.event_value(make_event(1)))
    stamp = datetime.now(timezone.utc)
    batch = WriterBatch(rows={"events": [(*rows[0], stamp, 1)]}, origins={"events": [("t", 0, 1)]}, messages=1)
    clickhouse_client.execute("DROP TABLE events")
    client = make_client(database=database)
    inserter = BatchInserter(client, topics.producer, topics.options(database, unique_name), threading.Event(), Progress())
    worker = threading.Thread(target=lambda: inserter(Message(Value(batch, {}))))
    worker.start()
    time.sleep(2)
    assert worker.is_alive(), "the insert gave up instead of waiting for the table"
    call_command("setup_clickhouse", database=database, stdout=StringIO())
    worker.join(60)
    assert not worker.is_alive()
    client.disconnect()
    assert batch.dead_letters == []
    assert clickhouse_client.execute("SELECT uuid FROM events") == [(rows[0][0],)]


@pytest.mark.parametrize(
    ("column_type", "expected"),
    [
        ("DateTime64(6, 'UTC')", 1621245599123456),
        ("DateTime64(3)", 1621245599123),
        ("DateTime('UTC')", 1621245599),
        ("DateTime", 1621245599),
    ],
)
def test_date_times_go_to_the_driver_as_raw_integers_of_their_column(column_type: str, expected: int) -> None:
    from plugin_server.clickhouse.writer import row_converter

    moment = datetime(2021, 5, 17, 9, 59, 59, 123456, tzinfo=timezone.utc)
    assert row_converter(["String", column_type, "UInt64"])(("a", moment, 5)) == ("a", expected, 5)


def test_a_decoder_failing_on_a_message_dead_letters_it_and_goes_on() -> None:
    from arroyo.backends.kafka import KafkaPayload
    from arroyo.types import BrokerValue, Partition, Topic

    from plugin_server.clickhouse.writer import Accumulator

    def failing(value: bytes) -> list[tuple[Any, ...]]:
        raise ZeroDivisionError("a decoder bug")

    topic_format = messages.TopicFormat("t", "events", messages.EVENT_COLUMNS, failing, json=False)
    accumulate = Accumulator({"t": topic_format, messages.EVENTS_TOPIC: messages.TOPIC_FORMATS[0]})
    moment = datetime(2021, 5, 17, 9, 0, 0)
    batch = WriterBatch()
    batch = accumulate(batch, BrokerValue(KafkaPayload(b"k", b"v", []), Partition(Topic("t"), 0), 7, moment))
    good = messages.event_value(make_event(1))
    batch = accumulate(batch, BrokerValue(KafkaPayload(None, good, []), Partition(Topic(messages.EVENTS_TOPIC), 1), 8, moment))
    assert [(letter.topic, letter.offset, letter.reason) for letter in batch.dead_letters] == [
        ("t", 7, "could not decode: ZeroDivisionError: a decoder bug")
    ]
    assert len(batch.rows["events"]) == 1 and batch.rows["events"][0][-2:] == (moment.replace(tzinfo=timezone.utc), 8)
    assert batch.messages == 2


def test_a_dead_letter_too_large_for_kafka_goes_cut_short_with_its_size(topics: Topics, database: str, unique_name: str) -> None:
    from plugin_server.clickhouse.client import make_client
    from plugin_server.clickhouse.writer import TRUNCATED_VALUE_BYTES, DeadLetter

    client = make_client(database=database)
    inserter = BatchInserter(client, topics.producer, topics.options(database, unique_name), threading.Event(), Progress())
    huge = b"x" * 3_000_000  # beyond the producer's 1 MB message limit
    inserter._dead_letter([DeadLetter("t", 0, 9, b"k", huge, "value is not JSON"), DeadLetter("t", 0, 10, None, b"small", "r")])
    client.disconnect()
    letters = topics.read_all(topics.dead_letter, 2)
    by_value_size = sorted(((len(message.value()), dict(message.headers())) for message in letters), key=lambda pair: pair[0])
    assert by_value_size[0][0] == len(b"small") and "truncated_from_bytes" not in by_value_size[0][1]
    assert by_value_size[1][0] == TRUNCATED_VALUE_BYTES
    assert by_value_size[1][1]["truncated_from_bytes"] == b"3000000" and by_value_size[1][1]["original_offset"] == b"9"
