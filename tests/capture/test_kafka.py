"""With KAFKA_ENABLED the capture endpoint produces PostHog's message to KAFKA_CONSUMPTION_TOPIC (real broker)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic
from django.test import Client, override_settings

from plugin_server.capture.batch import CapturedEvent
from plugin_server.capture.queue import partition_key
from plugin_server.ingestion.decode_kafka import decode_kafka_message
from plugin_server.models import Team

pytestmark = [pytest.mark.django_db, pytest.mark.kafka]


def test_a_batch_becomes_one_kafka_message_per_event(
    client: Client, team: Team, kafka_bootstrap: str, kafka_consumer_config: dict[str, object], unique_name: str
) -> None:
    """Each event: {uuid, distinct_id, ip, site_url, data (JSON text), team_id, now, sent_at}, keyed by team
    and distinct id; the answer comes after the broker has them all."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(unique_name, 2, 1)])[unique_name].result(10)
    body = {
        "api_key": team.api_token,
        "batch": [{"event": f"e{n}", "distinct_id": f"d{n % 2}", "properties": {"n": n}} for n in range(4)],
        "sent_at": "2021-05-17T10:00:00+00:00",
    }
    with override_settings(KAFKA_ENABLED=True, KAFKA_HOSTS=kafka_bootstrap, KAFKA_CONSUMPTION_TOPIC=unique_name):
        response = client.post("/batch/", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.content

    consumer = Consumer(kafka_consumer_config)
    consumer.subscribe([unique_name])
    messages = []
    try:
        for _ in range(100):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
            if len(messages) == 4:
                break
    finally:
        consumer.close()
    assert len(messages) == 4
    values = sorted((json.loads(message.value()) for message in messages), key=lambda value: value["data"])
    for n, value in enumerate(values):
        assert set(value) == {"uuid", "distinct_id", "ip", "site_url", "data", "team_id", "now", "sent_at"}
        assert json.loads(value["data"]) == {"event": f"e{n}", "distinct_id": f"d{n % 2}", "properties": {"n": n}}
        assert (value["distinct_id"], value["team_id"], value["ip"], value["site_url"]) == (f"d{n % 2}", team.id, "127.0.0.1", "http://testserver")
        assert value["sent_at"] == "2021-05-17T10:00:00+00:00"
        assert datetime.fromisoformat(value["now"]) <= datetime.now(timezone.utc)
    # The Kafka source's own decoder reads them as the events sent.
    events = sorted((decode_kafka_message(message.value(), 1_000_000) for message in messages), key=lambda event: event["event"])
    assert [(e["event"], e["distinct_id"], e["team_id"], e["properties"]["n"]) for e in events] == [(f"e{n}", f"d{n % 2}", team.id, n) for n in range(4)]
    assert {e["sent_at"] for e in events} == {"2021-05-17T10:00:00+00:00"}
    keys = {message.key().decode(): json.loads(message.value())["distinct_id"] for message in messages}
    assert keys == {partition_key(CapturedEvent(d, None, "", {}, team.id, "", None)): d for d in ("d0", "d1")}


def test_an_unreachable_broker_answers_503(client: Client, team: Team) -> None:
    """No broker answers within CAPTURE_QUEUE_TIMEOUT → 503, and the SDK sends again."""
    body = {"api_key": team.api_token, "event": "e", "distinct_id": "d"}
    with override_settings(KAFKA_ENABLED=True, KAFKA_HOSTS="127.0.0.1:1", KAFKA_CONSUMPTION_TOPIC="nowhere", CAPTURE_QUEUE_TIMEOUT=1.0):
        response = client.post("/e/", data=json.dumps(body), content_type="application/json")
    assert response.status_code == 503
    assert response.json()["code"] == "queue_unavailable"
