"""posthog.capture: the event goes back into ingestion as a Celery task (or a Kafka message)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from django.test import override_settings
from kombu import serialization

import plugin_server
from plugin_server.exceptions import MetaCallError
from plugin_server.ingestion.uuidt import is_valid_uuid
from plugin_server.plugins.meta.capture import CAPTURE_TASK, PluginCapture
from plugin_server.plugins.meta.context import PluginContext

pytestmark = pytest.mark.redis

UNNAMED = PluginContext(plugin_config_id=39, plugin_id=60, team_id=2, plugin_name="")
NAMED = PluginContext(plugin_config_id=39, plugin_id=60, team_id=2, plugin_name="test-maxmind-plugin")


@pytest.fixture
def queue(unique_name: str, redis_client: redis.Redis) -> Iterator[str]:
    with override_settings(PLUGINS_CELERY_QUEUE=unique_name):
        yield unique_name
    redis_client.delete(unique_name)


def pop_task(client: redis.Redis, queue: str) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """Take the one message off the queue the way a consumer does, and decode it with kombu."""
    assert client.llen(queue) == 1
    envelope = json.loads(client.rpop(queue))
    assert envelope["properties"]["body_encoding"] == "base64"
    body = base64.b64decode(envelope["body"])
    args, kwargs, _embed = serialization.loads(body, envelope["content-type"], envelope["content-encoding"])
    return envelope, args, kwargs


def test_capture_sends_the_celery_task(queue: str, redis_client: redis.Redis) -> None:
    """It sends process_event_with_plugins to PLUGINS_CELERY_QUEUE with the original's 7 args (no plugin row: plugin-id-60)."""
    PluginCapture().capture(UNNAMED, "my-new-event", {"random": "properties"})
    envelope, args, kwargs = pop_task(redis_client, queue)
    assert envelope["headers"]["task"] == CAPTURE_TASK
    assert envelope["properties"]["delivery_info"]["routing_key"] == queue
    assert envelope["content-type"] == "application/json"
    assert kwargs == {}
    distinct_id, ip, site_url, data, team_id, now, sent_at = args
    assert (distinct_id, ip, site_url, team_id) == ("plugin-id-60", None, None, 2)
    assert now == sent_at == data["timestamp"]
    assert data["distinct_id"] == "plugin-id-60"
    assert data["event"] == "my-new-event"
    assert data["team_id"] == 2
    assert is_valid_uuid(data["uuid"])
    assert data["properties"] == {
        "$lib": "posthog-plugin-server",
        "$lib_version": getattr(plugin_server, "__version__", "dev"),
        "distinct_id": "plugin-id-60",
        "random": "properties",
    }
    moment = datetime.strptime(data["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - moment) < timedelta(minutes=1)


def test_distinct_id_defaults_to_plugin_name(queue: str, redis_client: redis.Redis) -> None:
    """It uses the plugin's name as distinct id when the config has its plugin loaded."""
    PluginCapture().capture(NAMED, "event")
    _, args, _ = pop_task(redis_client, queue)
    assert args[0] == args[3]["distinct_id"] == "test-maxmind-plugin"


def test_user_defined_distinct_id_and_timestamp(queue: str, redis_client: redis.Redis) -> None:
    """It takes distinct_id and timestamp from the properties (timestamp leaves them, distinct_id stays)."""
    PluginCapture().capture(
        UNNAMED, "event", {"random": "properties", "distinct_id": "custom id", "timestamp": "2021-05-17T10:00:00.000Z"}
    )
    _, args, _ = pop_task(redis_client, queue)
    data = args[3]
    assert args[0] == data["distinct_id"] == data["properties"]["distinct_id"] == "custom id"
    assert args[5] == args[6] == data["timestamp"] == "2021-05-17T10:00:00.000Z"
    assert "timestamp" not in data["properties"]


def test_each_capture_has_its_own_uuid(queue: str, redis_client: redis.Redis) -> None:
    """It gives every captured event a new UUIDT."""
    capture = PluginCapture()
    capture.capture(NAMED, "a")
    capture.capture(NAMED, "b")
    uuids = set()
    for _ in range(2):
        envelope = json.loads(redis_client.rpop(queue))
        uuids.add(json.loads(base64.b64decode(envelope["body"]))[0][3]["uuid"])
    assert len(uuids) == 2


@pytest.mark.parametrize(
    ("ctx", "event", "properties", "message"),
    [
        (NAMED, "", {}, "event name must be a string"),
        (NAMED, 5, {}, "event name must be a string"),
        (NAMED, "x" * 201, {}, "event name must be a string"),
        (NAMED, "e", ["not", "a", "dict"], "properties must be a dict"),
        (NAMED, "e", {"s": {1, 2}}, "not JSON-serialisable"),
        (NAMED, "e", {"big": "x" * 1_048_576}, "larger than"),
        (PluginContext(plugin_config_id=1, plugin_id=1, team_id=None, plugin_name="p"), "e", {}, "no team"),
    ],
)
def test_bad_capture_is_refused_and_nothing_sent(queue: str, redis_client: redis.Redis, ctx, event, properties, message) -> None:  # type: ignore[no-untyped-def]
    """It refuses a bad event with a clear error and queues nothing."""
    with pytest.raises(MetaCallError, match=message):
        PluginCapture().capture(ctx, event, properties)
    assert redis_client.llen(queue) == 0


def test_broker_away_is_a_clear_error(queue: str) -> None:
    """It reports an unreachable broker as a capture error, quickly."""
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        with pytest.raises(MetaCallError, match="could not be queued"):
            PluginCapture().capture(NAMED, "event")


@pytest.mark.kafka
def test_kafka_pipeline_produces_to_the_consumption_topic(kafka_consumer_config: dict[str, object], unique_name: str) -> None:
    """It produces {distinct_id, ip, site_url, data (JSON text), team_id, now, sent_at, uuid} under KAFKA_ENABLED,
    keyed by person like the capture endpoint (one person's events in one partition, in order)."""
    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient, NewTopic

    from plugin_server.ingestion.decode_kafka import person_partition_key

    bootstrap = str(kafka_consumer_config["bootstrap.servers"])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(unique_name, 1, 1)])[unique_name].result(10)
    with override_settings(KAFKA_ENABLED=True, KAFKA_HOSTS=bootstrap, KAFKA_CONSUMPTION_TOPIC=unique_name):
        capture = PluginCapture()
        capture.capture(NAMED, "kafka-event", {"a": 1})
        assert capture.flush(10) == 0
    consumer = Consumer(kafka_consumer_config)
    try:
        consumer.subscribe([unique_name])
        messages: list[Any] = []
        deadline = time.monotonic() + 20
        while not messages and time.monotonic() < deadline:
            messages = consumer.consume(1, timeout=0.5)
        assert len(messages) == 1 and messages[0].error() is None
        message = messages[0]
        value = json.loads(message.value())
        data = json.loads(value["data"])
        assert value["uuid"] == data["uuid"]
        assert message.key().decode() == person_partition_key(2, "test-maxmind-plugin")
        assert (value["distinct_id"], value["ip"], value["site_url"], value["team_id"]) == ("test-maxmind-plugin", "", "", 2)
        assert value["now"] == value["sent_at"] == data["timestamp"]
        assert data["event"] == "kafka-event"
        assert data["properties"]["a"] == 1
    finally:
        consumer.close()


def test_captured_event_is_read_by_our_own_ingestion_decoder(queue: str, redis_client: redis.Redis) -> None:
    """It queues a message the server's Celery decoder turns back into the event (same uuid, team, name, properties)."""
    from plugin_server.events import Delivery
    from plugin_server.ingestion.decode import decode

    PluginCapture().capture(NAMED, "round-trip", {"random": "properties"})
    payload = redis_client.rpop(queue)
    event = decode(Delivery(payload=payload, token=None, queue=queue), max_bytes=10_000_000)
    assert event["event"] == "round-trip"
    assert event["team_id"] == 2
    assert event["distinct_id"] == "test-maxmind-plugin"
    assert event["properties"]["random"] == "properties"
    assert event["properties"]["$lib"] == "posthog-plugin-server"
    assert is_valid_uuid(event["uuid"])
    assert event["now"] == event["sent_at"] == event["timestamp"]
