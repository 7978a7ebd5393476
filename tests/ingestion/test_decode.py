"""Decoding Celery messages exactly as PostHog's capture endpoint sends them (real Celery client)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest
import redis

from plugin_server.events import Delivery
from plugin_server.exceptions import InvalidMessage
from plugin_server.ingestion.decode import decode
from tests.ingestion.celery_tasks import celery_app, send_event_task, task_args

pytestmark = pytest.mark.redis

LIMIT = 1_000_000
NOW = "2021-05-17T10:00:00.123456+00:00"


@pytest.fixture
def sent(redis_client: redis.Redis, unique_name: str) -> Callable[..., Delivery]:
    """Send one task with a real Celery producer and return the raw message it pushed."""

    def send(args: list, protocol: int = 2, name: str | None = None, **options: object) -> Delivery:
        with celery_app(protocol) as app:
            if options:
                app.conf.update(**options)
            if name:
                send_event_task(app, unique_name, args, name=name)
            else:
                send_event_task(app, unique_name, args)
        payload = redis_client.rpop(unique_name)
        assert payload is not None
        return Delivery(payload=payload, token=0, queue=unique_name)

    return send


def raw(payload: bytes | str) -> Delivery:
    return Delivery(payload=payload if isinstance(payload, bytes) else payload.encode(), token=0, queue="q")


def reason_of(delivery: Delivery) -> str:
    with pytest.raises(InvalidMessage) as caught:
        decode(delivery, LIMIT)
    return caught.value.reason


@pytest.mark.parametrize("protocol", [1, 2])
def test_builds_the_event_from_the_seven_args(sent: Callable[..., Delivery], protocol: int) -> None:
    """It builds {distinct_id, ip, site_url, team_id, now, sent_at, uuid} + data from protocol 1 and 2 messages."""
    data = {"event": "$pageview", "properties": {"a": 1}, "timestamp": "2021-05-17T09:59:00Z"}
    event = decode(sent(task_args(data, distinct_id="d1", team_id=2, now=NOW, sent_at=NOW), protocol=protocol), LIMIT)
    assert event["event"] == "$pageview"
    assert event["properties"] == {"a": 1}
    assert event["timestamp"] == "2021-05-17T09:59:00Z"
    assert (event["distinct_id"], event["ip"], event["site_url"], event["team_id"]) == ("d1", "127.0.0.1", "http://localhost", 2)
    assert (event["now"], event["sent_at"]) == (NOW, NOW)
    assert len(event["uuid"]) == 36


def test_keys_inside_data_override_the_positional_args(sent: Callable[..., Delivery]) -> None:
    """A uuid, distinct_id or team_id inside data wins over the positional value (spec §1.1)."""
    data = {"event": "e", "properties": {}, "uuid": "0179f3d5-1a2b-0000-aaaa-bbbbccccdddd", "distinct_id": 12345, "team_id": 7}
    event = decode(sent(task_args(data, distinct_id="outer", team_id=2)), LIMIT)
    assert event["uuid"] == "0179f3d5-1a2b-0000-aaaa-bbbbccccdddd"
    assert event["distinct_id"] == "12345"
    assert event["team_id"] == 7


def test_numeric_distinct_id_becomes_a_string_and_null_stays_null(sent: Callable[..., Delivery]) -> None:
    """distinct_id 12345 → "12345"; null stays null."""
    assert decode(sent(task_args(distinct_id=12345)), LIMIT)["distinct_id"] == "12345"
    assert decode(sent(task_args(distinct_id=None)), LIMIT)["distinct_id"] is None


def test_the_uuid_is_the_same_for_every_delivery_of_one_message(sent: Callable[..., Delivery]) -> None:
    """Re-delivering one message gives the same event uuid; another message gets another uuid."""
    first = sent(task_args(now=NOW))
    second = sent(task_args(now=NOW))
    assert decode(first, LIMIT)["uuid"] == decode(first, LIMIT)["uuid"]
    assert decode(first, LIMIT)["uuid"] != decode(second, LIMIT)["uuid"]
    # UUIDT layout: the first 6 bytes are `now` in ms.
    assert int(decode(first, LIMIT)["uuid"].replace("-", "")[:12], 16) == 1621245600123


def test_six_args_give_a_null_sent_at(sent: Callable[..., Delivery]) -> None:
    """A producer sending 6 args (no sent_at) gets sent_at null, not the kwargs object."""
    assert decode(sent(task_args()[:6]), LIMIT)["sent_at"] is None


def test_a_non_string_sent_at_is_null(sent: Callable[..., Delivery]) -> None:
    """sent_at {} (the original's kwargs quirk) is treated as null."""
    args = task_args()
    args[6] = {}
    assert decode(sent(args), LIMIT)["sent_at"] is None


@pytest.mark.parametrize("protocol", [1, 2])
def test_an_unknown_task_name_is_invalid(sent: Callable[..., Delivery], protocol: int) -> None:
    """A task other than process_event_with_plugins is rejected with reason unknown_task."""
    assert reason_of(sent(task_args(), protocol=protocol, name="posthog.tasks.other")) == "unknown_task"


@pytest.mark.parametrize("args", [[], ["a", "b", "c"], task_args() + ["extra", "more"]])
def test_a_wrong_number_of_args_is_invalid(sent: Callable[..., Delivery], args: list) -> None:
    """0, 3 or 9 positional args: bad_arguments."""
    assert reason_of(sent(args)) == "bad_arguments"


@pytest.mark.parametrize("data", [["not", "an", "object"], "text", 5, None])
def test_data_that_is_not_an_object_is_invalid(sent: Callable[..., Delivery], data: object) -> None:
    """data must be an object: a list, text, number or null is data_not_object."""
    args = task_args()
    args[3] = data
    assert reason_of(sent(args)) == "data_not_object"


@pytest.mark.parametrize("team_id", ["two", None, 2.5, True])
def test_a_team_id_that_is_not_an_integer_is_invalid(sent: Callable[..., Delivery], team_id: object) -> None:
    """team_id must be an integer: bad_team_id otherwise."""
    assert reason_of(sent(task_args(team_id=team_id))) == "bad_team_id"


def test_a_pickled_body_is_refused(sent: Callable[..., Delivery]) -> None:
    """A body serialised with pickle is never unpickled: bad_content_type."""
    delivery = sent(task_args(), task_serializer="pickle", accept_content=["pickle", "json"])
    assert reason_of(delivery) == "bad_content_type"


def test_a_message_over_the_size_limit_is_invalid(sent: Callable[..., Delivery]) -> None:
    """A 5 MB event is rejected with reason too_large before it is parsed."""
    delivery = sent(task_args({"event": "big", "properties": {"blob": "x" * 5_000_000}}))
    assert reason_of(delivery) == "too_large"


@pytest.mark.parametrize(
    "payload",
    [b"not json at all", b'{"body": "\xff\xfe"}', b"[1, 2]", b'{"body": "abc"}', b'{"properties": {}, "headers": []}'],
)
def test_a_malformed_envelope_is_invalid(payload: bytes) -> None:
    """Text that is not a kombu envelope (not JSON, invalid UTF-8, no properties) is bad_envelope."""
    assert reason_of(raw(payload)) == "bad_envelope"


def envelope(body: bytes, headers: dict | None = None, **fields: object) -> bytes:
    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers if headers is not None else {"task": "posthog.tasks.process_event.process_event_with_plugins", "id": "x"},
        "properties": {"body_encoding": "base64", "delivery_tag": "t", "delivery_info": {"exchange": "", "routing_key": "q"}},
    }
    message.update(fields)
    return json.dumps(message).encode()


def test_a_body_with_invalid_utf8_is_invalid() -> None:
    """A base64 body that is not valid UTF-8 JSON is bad_body."""
    assert reason_of(raw(envelope(b'[["\xff\xfe"], {}, {}]'))) == "bad_body"


def test_a_body_that_is_not_base64_is_invalid() -> None:
    """A body that is not base64 is bad_body."""
    message = json.loads(envelope(b"[]"))
    message["body"] = "%%% not base64 %%%"
    assert reason_of(raw(json.dumps(message))) == "bad_body"


def test_a_protocol_2_body_of_the_wrong_shape_is_invalid() -> None:
    """A protocol 2 body must be [args, kwargs, embed]."""
    assert reason_of(raw(envelope(b'{"args": []}'))) == "bad_body"


def test_other_content_encodings_are_invalid() -> None:
    """content-encoding other than utf-8 is refused, as the original does."""
    assert reason_of(raw(envelope(b"[[], {}, {}]", **{"content-encoding": "binary"}))) == "bad_content_type"


def test_event_data_is_plain_json(sent: Callable[..., Delivery]) -> None:
    """An object that looks like kombu's typed JSON ({"__type__", "__value__"}) stays a plain object in the event."""
    typed = {"__type__": "datetime", "__value__": "2021-01-01T00:00:00"}
    unknown = {"__type__": "nonsense", "__value__": 1}
    event = decode(sent(task_args({"event": "e", "properties": {"typed": typed, "unknown": unknown}})), LIMIT)
    assert event["properties"] == {"typed": typed, "unknown": unknown}


@pytest.mark.parametrize("compression", ["zlib", "gzip"])
def test_a_compressed_body_decodes_like_a_plain_one(sent: Callable[..., Delivery], compression: str) -> None:
    """A producer that compresses its task bodies (task_compression) gives the same event."""
    args = task_args(team_id=2, distinct_id="d1", data={"event": "$pageview", "uuid": "0179f2a1-0000-0000-0000-000000000001"})
    plain = decode(sent(args), LIMIT)
    compressed = sent(args, task_compression=compression)
    assert json.loads(compressed.payload)["headers"]["compression"]
    assert decode(compressed, LIMIT) == plain
