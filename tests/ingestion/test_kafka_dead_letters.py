"""Bad messages on the Kafka pipeline: dead-lettered to ``events_dead_letter_queue`` with their reason, never stopping the loop.

Decoding a message of the consumption topic (spec: ingestion.md §1.2) and
the later versions' dead-letter format, on the real broker.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from plugin_server.exceptions import InvalidMessage
from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.decode_kafka import decode_kafka_message
from plugin_server.ingestion.dlq import DeadLetterStore
from plugin_server.ingestion.dlq_topic import DeadLetterTopic
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.sources.kafka import KafkaSource
from plugin_server.models import DeadLetter, Team
from plugin_server.sinks.kafka import KafkaSink
from tests.factories import create_team
from tests.kafka_helpers import capture_message, create_topic, produce
from tests.sinks.sink_readers import kafka_read_model, read_topic


def message(**fields: Any) -> bytes:
    base = capture_message(2, "d", event_uuid="017a2c4f-0000-0000-0000-000000000001")
    base.update(fields)
    return json.dumps({key: value for key, value in base.items() if value is not ...}).encode()


def test_decoding_builds_the_event_from_the_double_encoded_data() -> None:
    """Top-level fields, then data's keys over them; empty ip/site_url/sent_at become null, distinct_id a text."""
    raw = json.dumps(
        {
            "uuid": "u-top",
            "distinct_id": 12345,
            "ip": "",
            "site_url": "",
            "data": json.dumps({"event": "$pageview", "properties": {"a": 1}, "uuid": "u-data"}),
            "team_id": 2,
            "now": "2021-05-17T10:00:00Z",
            "sent_at": "",
            "kafka_offset": "17",
        }
    ).encode()
    event = decode_kafka_message(raw, 10_000)
    assert event == {
        "uuid": "u-data",
        "distinct_id": "12345",
        "ip": None,
        "site_url": None,
        "team_id": 2,
        "now": "2021-05-17T10:00:00Z",
        "sent_at": None,
        "event": "$pageview",
        "properties": {"a": 1},
    }


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json at all", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (message(data=...), "missing_fields"),
        (message(team_id=...), "missing_fields"),
        (message(data='{"event": "x", broken'), "bad_data"),
        (message(data='"a text"'), "bad_data"),
        (message(data=17), "bad_data"),
        (message(team_id="two"), "bad_team_id"),
        (message(data=json.dumps({"properties": {"deep": [[[[[[[[[[1]]]]]]]]]]}})), "too_deep"),
    ],
    ids=["not json", "not an object", "no data", "no team", "data broken", "data not an object", "data a number", "team", "deep"],
)
def test_a_message_that_is_no_event_is_an_invalid_message_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(InvalidMessage) as error:
        decode_kafka_message(payload, 100_000, max_depth=8)
    assert error.value.reason == reason


@pytest.mark.django_db(transaction=True)
@pytest.mark.kafka
@pytest.mark.redis
def test_bad_messages_go_to_the_dead_letter_topic_and_the_loop_goes_on(
    kafka_bootstrap: str, unique_name: str, settings  # type: ignore[no-untyped-def]
) -> None:
    """Not JSON, missing fields, an unknown team, oversized, broken double-encoded data: each is a dead letter
    (table and topic, the later versions' format with the reason); the good events around them are stored."""
    settings.KAFKA_HOSTS = kafka_bootstrap
    team: Team = create_team(ingested_event=True)
    create_topic(kafka_bootstrap, unique_name, 1)
    good = [capture_message(team.id, "alice"), capture_message(team.id, "bob")]
    unknown_team = capture_message(999_999, "nobody")
    bad: list[dict[str, Any] | bytes] = [
        b"not json",
        json.dumps({"distinct_id": "x", "team_id": team.id}).encode(),
        json.dumps({**capture_message(team.id, "carol"), "data": "{broken"}).encode(),
        json.dumps({**capture_message(team.id, "dave", properties={"blob": "x" * 5000})}).encode(),
    ]
    produce(kafka_bootstrap, unique_name, [good[0], *bad, unknown_team, good[1]])
    prefix = f"{unique_name}-"
    sink = KafkaSink(topic_prefix=prefix)
    topic = DeadLetterTopic(topic=prefix + "events_dead_letter_queue")
    source = KafkaSource(unique_name, group=unique_name)
    options = ConsumerOptions.from_settings(batch_size=100, poll_timeout=0.5, max_message_bytes=4000)
    ingester = Ingester(sink=sink, persons=PersonManager(lru_size=100), max_event_bytes=100_000)
    consumer = Consumer(source, ingester, None, dead_letters=DeadLetterStore(topic=topic), options=options)
    taken = 0
    for _ in range(40):
        taken += consumer.run_once()
        if taken >= 7:
            break
    source.close()
    assert taken == 7
    model = kafka_read_model(kafka_bootstrap, sink)
    assert set(model.events) == {message["uuid"] for message in good}
    letters = [json.loads(value) for value in read_topic(kafka_bootstrap, topic.topic)]
    assert sorted(letter["reason"] for letter in letters) == sorted(["not_json", "missing_fields", "bad_data", "too_large", "unknown_team"])
    by_reason = {letter["reason"]: letter for letter in letters}
    unknown = by_reason["unknown_team"]
    assert unknown["event_uuid"] == unknown_team["uuid"]
    assert unknown["team_id"] == 999_999 and unknown["distinct_id"] == "nobody" and unknown["event"] == "$pageview"
    assert unknown["error"] == "ingestEvent failed. Error: No team found with ID 999999. Can't ingest event."
    assert unknown["error_location"] == "plugin_server_ingest_event"
    assert json.loads(unknown["raw_payload"]) == unknown_team
    assert len(unknown["error_timestamp"]) == 19 and unknown["properties"] == "{}"
    assert by_reason["not_json"]["raw_payload"] == "not json"
    assert by_reason["not_json"]["error_location"] == "plugin_server_decode"
    assert set(unknown) >= {"id", "event_uuid", "event", "properties", "distinct_id", "team_id", "elements_chain", "created_at",
                            "ip", "site_url", "now", "raw_payload", "error_timestamp", "error_location", "error"}
    # The same letters are in the table, for ./manage.py dead_letters (replay puts them back on the topic).
    assert sorted(DeadLetter.objects.values_list("reason", flat=True)) == sorted(letter["reason"] for letter in letters)
