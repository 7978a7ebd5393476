"""The local services: real round trips through Tansu and ClickHouse, and bin/services itself."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from clickhouse_driver import Client
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "bin" / "services"


def consume(consumer: Consumer, count: int, deadline: float = 30.0) -> list[Message]:
    """Bounded polls until `count` messages arrived or the deadline passed."""
    messages: list[Message] = []
    give_up = time.monotonic() + deadline
    while len(messages) < count and time.monotonic() < give_up:
        for message in consumer.consume(count - len(messages), timeout=0.5):
            assert message.error() is None, message.error()
            messages.append(message)
    return messages


@pytest.mark.kafka
def test_kafka_round_trip_with_group_commit(kafka_consumer_config: dict[str, object], unique_name: str) -> None:
    """A topic made with the admin API takes keyed messages; a consumer group
    reads every one in per-key order and commits; a new member of the group
    resumes after the commit and gets only what came later."""
    bootstrap = str(kafka_consumer_config["bootstrap.servers"])
    # Keep the client referenced: a collected AdminClient cancels its futures.
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(unique_name, 3, 1)])[unique_name].result(10)
    producer = Producer({"bootstrap.servers": bootstrap})
    for number in range(30):
        producer.produce(unique_name, key=f"k{number % 5}", value=f"{number}")
    assert producer.flush(10) == 0

    consumer = Consumer(kafka_consumer_config)
    consumer.subscribe([unique_name])
    messages = consume(consumer, 30)
    assert sorted(int(m.value()) for m in messages) == list(range(30))
    for key in {m.key() for m in messages}:
        values = [int(m.value()) for m in messages if m.key() == key]
        assert values == sorted(values), f"key {key!r} out of order"
    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition(unique_name, p) for p in range(3)], timeout=10)
    assert sum(max(tp.offset, 0) for tp in committed) == 30
    consumer.close()

    producer.produce(unique_name, key="k0", value="after the commit")
    assert producer.flush(10) == 0
    again = Consumer(kafka_consumer_config)
    again.subscribe([unique_name])
    resumed = consume(again, 1)
    # Anything committed before would show up here too, ahead of or beside it.
    resumed += again.consume(10, timeout=1.0)
    again.close()
    assert [m.value() for m in resumed] == [b"after the commit"]


@pytest.mark.kafka
def test_kafka_creates_a_topic_on_first_produce(kafka_bootstrap: str, unique_name: str) -> None:
    """Producing to a topic nobody created creates it (the ingestion topic needs no setup step)."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    assert unique_name not in admin.list_topics(timeout=10).topics
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    delivered: list[Message] = []
    producer.produce(unique_name, value=b"first", on_delivery=lambda error, message: delivered.append(message))
    assert producer.flush(10) == 0
    assert delivered[0].error() is None
    topic = admin.list_topics(unique_name, timeout=10).topics[unique_name]
    assert topic.error is None and len(topic.partitions) >= 1


@pytest.mark.clickhouse
def test_clickhouse_round_trip(clickhouse_client: Client) -> None:
    """A MergeTree table in a throw-away database takes one multi-row insert and
    gives the rows back over the native protocol and over HTTP."""
    clickhouse_client.execute(
        "CREATE TABLE events (uuid UUID, event String, team_id Int64, timestamp DateTime)"
        " ENGINE = MergeTree ORDER BY (team_id, uuid)"
    )
    rows = [(uuid4(), f"event {n}", n % 2, datetime(2026, 11, 27, 12, 0, n)) for n in range(10)]
    clickhouse_client.execute("INSERT INTO events VALUES", rows)

    stored = clickhouse_client.execute("SELECT uuid, event, team_id, timestamp FROM events ORDER BY timestamp")
    assert [(UUID(str(r[0])), *r[1:]) for r in stored] == rows
    database = clickhouse_client.connection.database
    query = urllib.parse.urlencode({"database": database, "query": "SELECT count() FROM events WHERE team_id = 1"})
    url = f"http://{settings.CLICKHOUSE_HOST}:{settings.CLICKHOUSE_HTTP_PORT}/?{query}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read().strip() == b"5"


# --- bin/services ----------------------------------------------------------------


def run_services(command: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SERVICES), command], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.kafka
@pytest.mark.clickhouse
def test_up_starts_nothing_when_everything_answers(kafka_bootstrap: str) -> None:
    """With every service answering, `bin/services up` starts nothing and says each is ready."""
    result = run_services("up")
    assert result.returncode == 0, result.stderr
    assert "starting" not in result.stdout
    for service in ("postgres", "redis", "kafka", "clickhouse"):
        assert f"{service}: ready on" in result.stdout


@pytest.fixture
def own_services(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment with its own SERVICES_DIR and free ports; what it starts is stopped after."""
    env = {
        "SERVICES_DIR": str(tmp_path / "services"),
        "KAFKA_HOSTS": f"127.0.0.1:{free_port()}",
        "CLICKHOUSE_HOST": "127.0.0.1",
        "CLICKHOUSE_PORT": str(free_port()),
        "CLICKHOUSE_HTTP_PORT": str(free_port()),
    }
    yield env
    run_services("down", **env)


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.clickhouse
def test_up_starts_on_ports_from_the_environment_and_down_stops_only_those(own_services: dict[str, str]) -> None:
    """On ports from the environment, `up` starts Tansu and ClickHouse with their
    data under SERVICES_DIR and returns once both answer; `down` stops exactly
    those two, and the shared services still answer."""
    kafka_port = int(own_services["KAFKA_HOSTS"].rsplit(":", 1)[1])
    clickhouse_port = int(own_services["CLICKHOUSE_PORT"])
    result = run_services("up", **own_services)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kafka: starting Tansu" in result.stdout
    assert "clickhouse: starting clickhouse-server" in result.stdout

    metadata = AdminClient({"bootstrap.servers": own_services["KAFKA_HOSTS"]}).list_topics(timeout=10)
    assert [broker.port for broker in metadata.brokers.values()] == [kafka_port]
    assert Client(host="127.0.0.1", port=clickhouse_port).execute("SELECT 1") == [(1,)]
    services_dir = Path(own_services["SERVICES_DIR"])
    assert (services_dir / "clickhouse" / "data" / "metadata").is_dir()
    assert (services_dir / "tansu.pid").is_file() and (services_dir / "clickhouse.pid").is_file()

    stopped = run_services("down", **own_services)
    assert stopped.returncode == 0, stopped.stderr
    assert not port_open(kafka_port) and not port_open(clickhouse_port)
    assert not list(services_dir.glob("*.pid"))
    assert run_services("status").returncode == 0, "the shared services must still answer"


@pytest.mark.slow
def test_up_names_a_port_held_by_something_that_is_not_kafka(tmp_path: Path) -> None:
    """A KAFKA_HOSTS port answered by another server (here Redis) fails `up` with
    a message naming it; no broker is started there."""
    redis_url = urllib.parse.urlsplit(settings.REDIS_URL)
    taken = f"{redis_url.hostname}:{redis_url.port or 6379}"
    result = run_services("up", SERVICES_DIR=str(tmp_path), KAFKA_HOSTS=taken, SERVICES_START_TIMEOUT="1")
    assert result.returncode != 0
    assert f"{taken} answers but not as a Kafka broker" in result.stderr
    assert not (tmp_path / "tansu.pid").exists()


def test_up_starts_no_broker_for_a_remote_address(tmp_path: Path) -> None:
    """A KAFKA_HOSTS on another machine that does not answer is an error, not a local start."""
    result = run_services("up", SERVICES_DIR=str(tmp_path), KAFKA_HOSTS="192.0.2.1:9092")
    assert result.returncode != 0
    assert "nothing answers on 192.0.2.1:9092 (not a local address" in result.stderr
    assert not (tmp_path / "tansu.pid").exists()


def test_down_leaves_alone_a_process_that_took_over_a_recorded_pid(tmp_path: Path) -> None:
    """A pid file whose pid now belongs to another program is dropped, and that
    program is not signalled: `down` stops only what `up` started."""
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "tansu.pid").write_text(f"{bystander.pid}\n")
        (tmp_path / "clickhouse.pid").write_text(f"{bystander.pid}\n")
        result = run_services("down", SERVICES_DIR=str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert bystander.poll() is None, "down signalled a process it did not start"
        assert not list(tmp_path.glob("*.pid"))
    finally:
        bystander.kill()
        bystander.wait()


def test_an_unknown_command_prints_the_usage() -> None:
    """`bin/services` with an unknown command exits 2 with its usage line."""
    result = run_services("restart")
    assert result.returncode == 2
    assert "usage: bin/services up|down|status" in result.stderr
