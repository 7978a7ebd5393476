"""The ``Event`` protobuf message of ``clickhouse_events_proto``, length-delimited.

The descriptor is built here in Python from the same fields as
``events.proto`` beside this module (no protoc, no generated code, so no
generated-code/runtime version pairing to keep); a test checks the two agree.
Each Kafka message value holds one or more messages in protobuf's
"delimited" framing: a varint byte length, then the message. That is the
framing ClickHouse's ``Protobuf`` input format reads.

``proto_created_at`` and ``proto_timestamp`` (fields 9 and 10) are part of
the schema but never set, as in the original.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2
from google.protobuf.message import DecodeError, Message

PROTO_FILE_NAME: Final = "events.proto"
MESSAGE_NAME: Final = "Event"
# What a ClickHouse Kafka table names as its schema: "<file without .proto>:<message>".
FORMAT_SCHEMA: Final = "events:Event"

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_UINT64 = descriptor_pb2.FieldDescriptorProto.TYPE_UINT64
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_TIMESTAMP = ".google.protobuf.Timestamp"

# (number, name, type) in field-number order, as events.proto declares them.
FIELDS: Final[tuple[tuple[int, str, int], ...]] = (
    (1, "uuid", _STRING),
    (2, "event", _STRING),
    (3, "properties", _STRING),
    (4, "timestamp", _STRING),
    (5, "team_id", _UINT64),
    (6, "distinct_id", _STRING),
    (7, "created_at", _STRING),
    (8, "elements_chain", _STRING),
    (9, "proto_created_at", _MESSAGE),
    (10, "proto_timestamp", _MESSAGE),
)


def file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """``events.proto`` as a descriptor (what protoc would make of the file)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name=PROTO_FILE_NAME, syntax="proto3", dependency=["google/protobuf/timestamp.proto"]
    )
    message = proto.message_type.add(name=MESSAGE_NAME)
    for number, name, kind in FIELDS:
        field = message.field.add(
            name=name, number=number, type=kind, label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
        )
        field.json_name = "".join(part if i == 0 else part.capitalize() for i, part in enumerate(name.split("_")))
        if kind == _MESSAGE:
            field.type_name = _TIMESTAMP
    return proto


def _message_class() -> Callable[..., Message]:
    # A pool of our own: nothing else registered under "events.proto" can clash.
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file_descriptor_proto())
    return cast(Callable[..., Message], message_factory.GetMessageClass(pool.FindMessageTypeByName(MESSAGE_NAME)))


EventMessage: Final = _message_class()


@dataclass(frozen=True, slots=True)
class EventRow:
    """One ``Event`` message: the texts as they travel (timestamps in ClickHouse millisecond format)."""

    uuid: str
    event: str
    properties: str  # JSON text
    timestamp: str  # "YYYY-MM-DD HH:MM:SS.mmm", UTC
    team_id: int
    distinct_id: str
    created_at: str  # = timestamp at v0.21.3
    elements_chain: str


def varint(value: int) -> bytes:
    """The unsigned LEB128 varint protobuf uses for lengths."""
    if value < 0:
        raise ValueError("a varint length cannot be negative")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited(payload: bytes) -> bytes:
    """``payload`` framed as protobuf's delimited encoding: its varint length, then itself."""
    return varint(len(payload)) + payload


def split_delimited(data: bytes) -> list[bytes]:
    """The messages of a delimited stream; ValueError when a length or message is cut short."""
    messages = []
    position, end = 0, len(data)
    while position < end:
        length, shift = 0, 0
        while True:
            if position >= end:
                raise ValueError("delimited protobuf: the length varint is cut short")
            byte = data[position]
            position += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 63:
                raise ValueError("delimited protobuf: the length varint is longer than 10 bytes")
        if position + length > end:
            raise ValueError(f"delimited protobuf: a {length}-byte message but {end - position} bytes left")
        messages.append(data[position : position + length])
        position += length
    return messages


def encode_event(row: EventRow) -> bytes:
    """One length-delimited ``Event`` message."""
    message = EventMessage(
        uuid=row.uuid,
        event=row.event,
        properties=row.properties,
        timestamp=row.timestamp,
        team_id=row.team_id,
        distinct_id=row.distinct_id,
        created_at=row.created_at,
        elements_chain=row.elements_chain,
    )
    return delimited(message.SerializeToString())


def decode_events(value: bytes) -> list[EventRow]:
    """Every ``Event`` in a message value; ValueError for bad framing or a message protobuf refuses."""
    rows = []
    for payload in split_delimited(value):
        message = EventMessage()
        try:
            message.ParseFromString(payload)
        except DecodeError as error:
            raise ValueError(f"not an Event protobuf message: {error}") from error
        rows.append(
            EventRow(
                uuid=getattr(message, "uuid"),
                event=getattr(message, "event"),
                properties=getattr(message, "properties"),
                timestamp=getattr(message, "timestamp"),
                team_id=getattr(message, "team_id"),
                distinct_id=getattr(message, "distinct_id"),
                created_at=getattr(message, "created_at"),
                elements_chain=getattr(message, "elements_chain"),
            )
        )
    return rows
