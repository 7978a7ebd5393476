"""The clickhouse_* and plugin_log_entries messages: built by the Kafka sink, read back by the writer."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from plugin_server.clickhouse import messages, proto
from plugin_server.clickhouse.messages import BadMessage
from plugin_server.ingestion.elements import Element
from plugin_server.ingestion.person_batch import DistinctIdChange
from plugin_server.ingestion.person_store import PersonRecord
from plugin_server.plugins.meta.logger import LogEntry
from plugin_server.sinks.base import PreparedEvent, PreparedRecording

MOMENT = datetime(2021, 5, 17, 9, 59, 59, 123456, tzinfo=timezone.utc)
UUID = "017978f1-2b3c-0000-1234-56789abcdef0"


def _event(**overrides: object) -> PreparedEvent:
    values: dict[str, object] = {
        "uuid": UUID,
        "team_id": 2,
        "distinct_id": "ann",
        "event": "$pageview",
        "properties": {"$current_url": "https://example.com/ö", "n": 3, "ok": True},
        "timestamp": MOMENT,
    }
    values.update(overrides)
    return PreparedEvent(**values)  # type: ignore[arg-type]


def test_event_message_holds_the_spec_fields_in_clickhouse_formats() -> None:
    row = messages.event_row(_event())
    assert row == proto.EventRow(
        uuid=UUID,
        event="$pageview",
        properties='{"$current_url":"https://example.com/ö","n":3,"ok":true}',
        timestamp="2021-05-17 09:59:59.123",
        team_id=2,
        distinct_id="ann",
        created_at="2021-05-17 09:59:59.123",
        elements_chain="",
    )


def test_event_value_is_the_protobuf_wire_format_length_delimited() -> None:
    # Written out by hand from the protobuf encoding rules: tag (number << 3 | wire type), length, bytes.
    row = proto.EventRow("u", "e", "{}", "t", 2, "d", "c", "")
    payload = b"\x0a\x01u" + b"\x12\x01e" + b"\x1a\x02{}" + b"\x22\x01t" + b"\x28\x02" + b"\x32\x01d" + b"\x3a\x01c"
    assert proto.encode_event(row) == bytes([len(payload)]) + payload


def test_event_round_trip_with_elements_and_a_long_message() -> None:
    elements = [
        Element(tag_name="a", href="/a-url", attr_class=["small"], text="bla bla", nth_child=1, nth_of_type=0,
                attributes={"prop": "value", "number": 33}),
        Element(tag_name="button", attr_class=["btn", "btn-primary"], nth_child=0, nth_of_type=0),
    ]
    event = _event(elements=elements, properties={"big": "x" * 1000})
    value = messages.event_value(event)
    assert value[0] & 0x80  # a length above 127 takes a two-byte varint
    [row] = messages.event_rows(value)
    assert row == (
        uuid.UUID(UUID),
        "$pageview",
        json.dumps({"big": "x" * 1000}, separators=(",", ":")),
        MOMENT.replace(microsecond=123000),
        2,
        "ann",
        'a.small:href="/a-url"nth-child="1"nth-of-type="0"number="33"prop="value"text="bla bla";'
        'button.btn.btn-primary:nth-child="0"nth-of-type="0"',
        MOMENT.replace(microsecond=123000),
    )
    assert dict(zip(messages.EVENT_COLUMNS, row))["elements_chain"].startswith("a.small:")


def test_several_delimited_events_in_one_value_are_all_read() -> None:
    value = messages.event_value(_event()) + messages.event_value(_event(uuid=str(uuid.UUID(int=7)), distinct_id="bo"))
    rows = messages.event_rows(value)
    assert [(row[0], row[5]) for row in rows] == [(uuid.UUID(UUID), "ann"), (uuid.UUID(int=7), "bo")]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "empty value"),
        (b"\x05abc", "5-byte message but 3 bytes left"),
        (b"\x80", "cut short"),
        (b"\x02\xff\xff", "not an Event protobuf message"),
        (proto.delimited(b"\x0a\x02\xc3\x28"), "not an Event protobuf message"),  # field 1 is not UTF-8
        (proto.encode_event(proto.EventRow("not-a-uuid", "e", "{}", "2021-05-17 09:59:59.000", 2, "d", "", "")), "uuid"),
        (proto.encode_event(proto.EventRow(UUID, "e", "{}", "yesterday", 2, "d", "", "")), "timestamp"),
        (proto.encode_event(proto.EventRow(UUID, "e", "{}", "2021-05-17 09:59:59", 2**63, "d", "", "")), "team_id"),
    ],
)
def test_bad_event_values_are_refused_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(BadMessage, match=re.escape(reason)):
        messages.event_rows(value)


def test_proto_file_declares_the_fields_the_module_builds() -> None:
    text = (Path(proto.__file__).parent / "events.proto").read_text()
    declared = re.findall(r"^\s*([\w.]+) (\w+) = (\d+);", text, re.MULTILINE)
    type_names = {proto._STRING: "string", proto._UINT64: "uint64", proto._MESSAGE: "google.protobuf.Timestamp"}
    assert declared == [(type_names[kind], name, str(number)) for number, name, kind in proto.FIELDS]
    assert 'syntax = "proto3";' in text and "message Event {" in text
    descriptor = proto.EventMessage().DESCRIPTOR
    assert [(field.number, field.name) for field in descriptor.fields] == [(n, name) for n, name, _ in proto.FIELDS]
    assert descriptor.fields_by_name["proto_timestamp"].message_type.full_name == "google.protobuf.Timestamp"


def test_recording_round_trip() -> None:
    recording = PreparedRecording(UUID, 2, "ann", "s1", {"type": 3, "data": ["ö", None]}, MOMENT)
    value = messages.recording_value(recording)
    assert json.loads(value) == {
        "uuid": UUID,
        "team_id": 2,
        "distinct_id": "ann",
        "session_id": "s1",
        "snapshot_data": '{"type":3,"data":["ö",null]}',
        "timestamp": "2021-05-17 09:59:59.123",
        "created_at": "2021-05-17 09:59:59.123",
    }
    moment = MOMENT.replace(microsecond=123000)
    assert messages.recording_rows(value) == [
        (uuid.UUID(UUID), moment, 2, "ann", "s1", '{"type":3,"data":["ö",null]}', moment)
    ]


def test_person_created_in_milliseconds_updated_in_seconds() -> None:
    person = PersonRecord(17, UUID, 2, MOMENT, {"userProp": "propValue"}, True)
    created = messages.person_value(person, created=True)
    assert created == (
        b'{"created_at":"2021-05-17 09:59:59.123","properties":"{\\"userProp\\":\\"propValue\\"}",'
        b'"team_id":2,"is_identified":true,"id":"' + UUID.encode() + b'"}'
    )
    updated = json.loads(messages.person_value(person, created=False))
    assert updated["created_at"] == "2021-05-17 09:59:59"
    assert messages.person_rows(created) == [
        (uuid.UUID(UUID), MOMENT.replace(microsecond=123000), 2, '{"userProp":"propValue"}', 1, 0)
    ]
    assert messages.person_rows(messages.person_value(person, created=False))[0][1] == MOMENT.replace(microsecond=0)
    later = json.loads(created) | {"is_deleted": 1}
    assert messages.person_rows(json.dumps(later).encode())[0][5] == 1


def test_person_distinct_id_round_trip() -> None:
    value = messages.person_distinct_id_value(DistinctIdChange(17, 2, "abc", UUID))
    assert json.loads(value) == {"id": 17, "distinct_id": "abc", "person_id": UUID, "team_id": 2}
    assert messages.person_distinct_id_rows(value) == [(17, "abc", uuid.UUID(UUID), 2, 0)]


def test_plugin_log_entry_round_trip() -> None:
    entry = LogEntry(team_id=2, plugin_id=3, plugin_config_id=39, source="CONSOLE", type="INFO", message="amogus ö",
                     timestamp=MOMENT, instance_id=uuid.UUID(int=5), id=uuid.UUID(UUID))
    value = messages.plugin_log_entry_value(entry)
    assert json.loads(value) == {
        "id": UUID,
        "team_id": 2,
        "plugin_id": 3,
        "plugin_config_id": 39,
        "timestamp": "2021-05-17 09:59:59.123",
        "source": "CONSOLE",
        "type": "INFO",
        "message": "amogus ö",
        "instance_id": str(uuid.UUID(int=5)),
    }
    assert messages.plugin_log_entry_rows(value) == [
        (uuid.UUID(UUID), 2, 3, 39, MOMENT.replace(microsecond=123000), "CONSOLE", "INFO", "amogus ö", uuid.UUID(int=5))
    ]


@pytest.mark.parametrize(
    ("rows", "value", "reason"),
    [
        (messages.person_rows, b"not json", "not JSON"),
        (messages.person_rows, b"[1]", "not a JSON object"),
        (messages.person_rows, b'{"id": "' + UUID.encode() + b'", "team_id": 2}', "missing field 'properties'"),
        (messages.person_distinct_id_rows, b'{"distinct_id": "a", "person_id": "x", "team_id": 2}', "person_id"),
        (messages.person_distinct_id_rows, b'{"distinct_id": 5, "person_id": "' + UUID.encode() + b'", "team_id": 2}',
         "distinct_id is not a text"),
        (messages.recording_rows, b'{"uuid": "' + UUID.encode() + b'", "timestamp": 5}', "timestamp is not a text"),
        (messages.plugin_log_entry_rows, b'{"id": "' + UUID.encode() + b'", "team_id": "2"}', "team_id"),
        (messages.person_rows, b'{"id": "' + UUID.encode() + b'", "created_at": "2021-01-01 00:00:00", "team_id": 2,'
         b' "properties": "{}", "is_identified": "yes"}', "is_identified is not a boolean"),
    ],
)
def test_bad_json_values_are_refused_with_a_reason(rows: object, value: bytes, reason: str) -> None:
    with pytest.raises(BadMessage, match=re.escape(reason)):
        rows(value)  # type: ignore[operator]


def test_compact_json_matches_json_stringify_and_survives_what_orjson_refuses() -> None:
    assert messages.compact_json({"a": [1, 2.5, None], "b": "ö"}) == '{"a":[1,2.5,null],"b":"ö"}'
    assert messages.compact_json({"n": 2**70}) == '{"n":1180591620717411303424}'
    text = messages.compact_json({"s": "\ud800"})
    assert text == '{"s":"\\ud800"}'
    text.encode()  # valid UTF-8 on the wire


def test_lone_surrogates_in_json_text_fields_become_replacement_characters() -> None:
    value = b'{"id": 1, "distinct_id": "a\\ud800b", "person_id": "' + UUID.encode() + b'", "team_id": 2}'
    assert messages.person_distinct_id_rows(value)[0][1] == "a?b"


def test_json_nested_too_deep_for_the_reader_is_a_bad_message() -> None:
    value = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with pytest.raises(BadMessage, match="nested too deep"):
        messages.person_rows(value)
