"""Fixtures shared by the whole suite. Every service used is the real one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import redis
from django.conf import settings

from plugin_server.metrics import RecordingMetrics, set_metrics

if TYPE_CHECKING:
    from clickhouse_driver import Client as ClickHouseClient


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """A client on the real Redis at REDIS_URL."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.ping()
    yield client
    client.close()


@pytest.fixture
def unique_name() -> str:
    """A name no other test uses: for queues, topics, groups and key prefixes."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def recording_metrics() -> Iterator[RecordingMetrics]:
    """Installs a RecordingMetrics backend for the test, then puts the default back."""
    backend = RecordingMetrics()
    set_metrics(backend)
    yield backend
    set_metrics(None)


# --- Kafka (Tansu) and ClickHouse: the local services part (bin/services) -------------


def _require_marker(request: pytest.FixtureRequest, service: str) -> None:
    """A test declares the services it touches: the fixture fails an undeclared use."""
    if request.node.get_closest_marker(service) is None:
        pytest.fail(f"{request.node.nodeid} uses the real {service} server: mark it @pytest.mark.{service}")


@pytest.fixture(scope="session")
def _kafka_answering() -> str:
    """The bootstrap string, once the broker has answered a metadata request."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    bootstrap = settings.KAFKA_HOSTS or "127.0.0.1:9092"
    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    except KafkaException as error:
        # Fail, never skip: CI must not pass for want of a service.
        pytest.fail(f"no Kafka broker answers on {bootstrap} ({error}): run bin/services up")
    return bootstrap


@pytest.fixture
def kafka_bootstrap(request: pytest.FixtureRequest, _kafka_answering: str) -> str:
    """The real broker's bootstrap servers (KAFKA_HOSTS), checked to answer.

    Use a unique topic (``unique_name``) per test: the broker is shared.
    """
    _require_marker(request, "kafka")
    return _kafka_answering


@pytest.fixture
def kafka_consumer_config(kafka_bootstrap: str, unique_name: str) -> dict[str, object]:
    """confluent-kafka consumer settings in a group of this test's own.

    Tansu answers a JoinGroup only after about half the session timeout (23 s
    with librdkafka's 45 s default), so tests use a short one: the group is
    assigned in about a second. Offsets are committed by hand, as the
    ingestion consumer does.
    """
    return {
        "bootstrap.servers": kafka_bootstrap,
        "group.id": unique_name,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 2000,
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 100,
    }


@pytest.fixture
def clickhouse_client(request: pytest.FixtureRequest) -> Iterator[ClickHouseClient]:
    """A clickhouse-driver client on a throw-away database of this test's own.

    The database is created on CLICKHOUSE_HOST:CLICKHOUSE_PORT before the test
    and dropped after it; ``client.connection.database`` names it.
    """
    from clickhouse_driver import Client
    from clickhouse_driver.errors import Error as ClickHouseError

    _require_marker(request, "clickhouse")
    options = {
        "host": settings.CLICKHOUSE_HOST,
        "port": settings.CLICKHOUSE_PORT,
        "user": settings.CLICKHOUSE_USER,
        "password": settings.CLICKHOUSE_PASSWORD or "",
    }
    database = f"test_{uuid.uuid4().hex[:12]}"
    admin = Client(**options)
    try:
        admin.execute(f"CREATE DATABASE {database}")
    except (ClickHouseError, OSError, EOFError) as error:
        pytest.fail(f"no ClickHouse answers on {options['host']}:{options['port']} ({error!r}): run bin/services up")
    client = Client(database=database, **options)
    yield client
    client.disconnect()
    admin.execute(f"DROP DATABASE IF EXISTS {database}")
    admin.disconnect()
