"""Decoding a raw Celery message into the event the capture endpoint sent.

The envelope is read the way a Celery worker reads it: kombu parses the Redis
transport's JSON envelope and decodes the base64 (and any compressed) body
(:class:`kombu.transport.virtual.base.Message`); the JSON body is then read
as plain JSON, without kombu's ``__type__`` object hook (the original read it
with ``JSON.parse``; event data is the user's, not kombu's). And
Celery's own ``hybrid_to_proto2`` turns a protocol 1 body into the protocol 2
``(args, kwargs, embed)`` shape. Only ``application/json`` is accepted: a
pickle body would run code of the producer's choosing.

The task's 7 positional args become the event
``{distinct_id, ip, site_url, team_id, now, sent_at, uuid}`` with every key of
``data`` laid over it. Everything that cannot become such an event raises
:class:`~plugin_server.exceptions.InvalidMessage` with a stable ``reason``:

``too_large``, ``too_deep``, ``bad_envelope``, ``bad_content_type``,
``bad_body``, ``unknown_task``, ``bad_arguments``, ``data_not_object``,
``bad_team_id``.

Limits come before parsing: the size of the raw message (and of a
compressed body once inflated, which is inflated only that far), and the
nesting depth of the envelope and of the body text
(:func:`~.limits.json_depth_exceeds`, no recursion), so no parser and no
later step (``pickle`` for the plugin workers, ``json`` for storage) ever
recurses through a hostile message.

``distinct_id`` is made text the way the original's JavaScript ``String()``
did it (:func:`~.jsstring.js_string`): ``true`` → ``"true"``, ``3.0`` → ``"3"``.

An event without a uuid of its own gets one derived from the message (its
task id, else its bytes), not a random one: a message delivered twice (after a
crash) then carries the same uuid twice, and is stored once.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from datetime import datetime
from typing import Any, cast

from celery.exceptions import InvalidTaskError
from celery.worker.strategy import hybrid_to_proto2  # type: ignore[attr-defined]  # celery-types omits it
from kombu.exceptions import DecodeError
from kombu.transport.virtual.base import Channel as VirtualChannel
from kombu.transport.virtual.base import Message as TransportMessage
from kombu.utils.json import loads as kombu_json_loads

from plugin_server import json_codec
from plugin_server.events import CELERY_TASK_NAME, Delivery, PluginEvent
from plugin_server.exceptions import InvalidMessage
from plugin_server.ingestion.inflate import inflate
from plugin_server.ingestion.jsstring import js_string
from plugin_server.ingestion.limits import json_depth_exceeds

ACCEPTED_CONTENT_TYPES = frozenset({"application/json"})
TASK_ARG_COUNT = 7
DEFAULT_MAX_DEPTH = 100
# A kombu envelope is shallow (body, headers, properties.delivery_info, ...).
ENVELOPE_DEPTH = 16
# The event sits inside [args, kwargs, embed] → args: two levels of wrapping.
BODY_WRAPPING_DEPTH = 2


class _BodyCodecs:
    """The part of a kombu channel a transport message needs: body codecs (base64)."""

    codecs = VirtualChannel.codecs
    decode_body = VirtualChannel.decode_body


_BODY_CODECS = _BodyCodecs()


def _plain_kombu_loads(data: Any) -> Any:
    # What json_codec.loads falls back to for what orjson does not read alike.
    return kombu_json_loads(data, object_hook=None)


def decode(delivery: Delivery, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> PluginEvent:
    """The event carried by one Celery message, or :class:`InvalidMessage`.

    ``max_depth`` bounds how deeply the event's objects and arrays may nest."""
    if len(delivery.payload) > max_bytes:
        raise InvalidMessage("too_large", f"message of {len(delivery.payload)} bytes is over the limit of {max_bytes}")
    if json_depth_exceeds(delivery.payload, ENVELOPE_DEPTH):
        raise InvalidMessage("too_deep", f"the envelope nests deeper than {ENVELOPE_DEPTH} levels")
    envelope = _read_envelope(delivery.payload)
    body, headers = _read_body(envelope, max_bytes, max_depth + BODY_WRAPPING_DEPTH)
    task = headers.get("task")
    if task != CELERY_TASK_NAME:
        raise InvalidMessage("unknown_task", f"Missing process handler for task {task}")
    return event_from_task(body, _task_id(headers, delivery.payload))


def _read_envelope(payload: bytes) -> dict[str, Any]:
    try:
        envelope = json_codec.loads(payload, _plain_kombu_loads)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidMessage("bad_envelope", f"envelope is not JSON text: {error}") from error
    if not isinstance(envelope, dict) or not isinstance(envelope.get("properties"), dict):
        raise InvalidMessage("bad_envelope", "envelope is not a kombu message (no properties object)")
    if not isinstance(envelope.get("headers", {}), dict):
        raise InvalidMessage("bad_envelope", "envelope headers are not an object")
    return envelope


def _read_body(envelope: dict[str, Any], max_bytes: int, max_depth: int) -> tuple[Any, dict[str, Any]]:
    """The protocol 2 ``(args, kwargs, embed)`` body and the task headers."""
    content_type = envelope.get("content-type")
    encoding = envelope.get("content-encoding")
    body_encoding = envelope["properties"].get("body_encoding")
    if content_type not in ACCEPTED_CONTENT_TYPES:
        raise InvalidMessage("bad_content_type", f"content type {content_type!r} is not accepted (only application/json)")
    if encoding != "utf-8" or body_encoding != "base64":
        raise InvalidMessage(
            "bad_content_type", f"content encoding {encoding!r} / body encoding {body_encoding!r} (expected utf-8 / base64)"
        )
    envelope["properties"].setdefault("delivery_tag", None)
    headers: dict[str, Any] = envelope.get("headers") or {}
    raw_body = envelope.get("body")
    message: TransportMessage | None = None
    compression = headers.get("compression")
    try:
        if compression and isinstance(raw_body, str):
            # Inflated here, at most max_bytes of it: kombu would inflate a
            # bomb whole. The kombu message then sees the plain body.
            body_bytes = inflate(base64.b64decode(raw_body.encode("utf-8")), str(compression), max_bytes)
            if "task" not in headers:
                plain = {**envelope, "headers": {k: v for k, v in headers.items() if k != "compression"}}
                plain["body"] = base64.b64encode(body_bytes).decode()
                message = TransportMessage(plain, channel=cast(VirtualChannel, _BODY_CODECS), accept=ACCEPTED_CONTENT_TYPES)
        elif "task" in headers and isinstance(raw_body, str) and raw_body:
            # Protocol 2, uncompressed (what PostHog sends): exactly what the
            # kombu message below would decode (base64 of the UTF-8 text),
            # without building it: a sixth of decoding's CPU.
            body_bytes = base64.b64decode(raw_body.encode("utf-8"))
        else:
            # The message reads only codecs and decode_body from its channel.
            channel = cast(VirtualChannel, _BODY_CODECS)
            message = TransportMessage(envelope, channel=channel, accept=ACCEPTED_CONTENT_TYPES)
            if message.errors:
                raise DecodeError(str(message.errors[0][1]))
            # The channel has base64-decoded it: bytes (the stubs say str | None).
            body_bytes = cast(bytes, message.body)
        if len(body_bytes) > max_bytes:
            raise InvalidMessage("too_large", f"message body of {len(body_bytes)} bytes is over the limit of {max_bytes}")
        if json_depth_exceeds(body_bytes, max_depth):
            raise InvalidMessage("too_deep", f"the event nests deeper than {max_depth - BODY_WRAPPING_DEPTH} levels")
        # Plain JSON, as the original's JSON.parse read it: kombu's default
        # object hook would turn {"__type__": ..., "__value__": ...} inside an
        # event into Python objects (or refuse it), and costs a call per object.
        body = json_codec.loads(body_bytes, _plain_kombu_loads)
    except (DecodeError, binascii.Error, ValueError, TypeError) as error:
        raise InvalidMessage("bad_body", f"message body cannot be decoded: {error}") from error
    if "task" in headers:  # protocol 2
        if not isinstance(body, list) or len(body) != 3:
            raise InvalidMessage("bad_body", "protocol 2 body is not [args, kwargs, embed]")
        return body, headers
    if not isinstance(body, dict):  # protocol 1 is an object
        raise InvalidMessage("bad_body", "message has no task header and its body is not a protocol 1 object")
    assert message is not None  # no task header: the kombu message was built
    try:
        proto2_body, proto2_headers, _decoded, _utc = hybrid_to_proto2(message, body)
    except InvalidTaskError as error:
        raise InvalidMessage("bad_body", f"protocol 1 body: {error}") from error
    return list(proto2_body), proto2_headers


def _task_id(headers: dict[str, Any], payload: bytes) -> bytes:
    task_id = headers.get("id")
    return str(task_id).encode() if task_id else payload


def event_from_task(body: Any, task_id: bytes) -> PluginEvent:
    """The event of a ``process_event_with_plugins`` task from its protocol 2 body."""
    args = body[0]
    if not isinstance(args, list) or len(args) not in (TASK_ARG_COUNT - 1, TASK_ARG_COUNT):
        count = len(args) if isinstance(args, list) else type(args).__name__
        raise InvalidMessage("bad_arguments", f"expected {TASK_ARG_COUNT} positional arguments, got {count}")
    distinct_id, ip, site_url, data, team_id, now = args[:6]
    sent_at = args[6] if len(args) == TASK_ARG_COUNT else None
    if not isinstance(data, dict):
        raise InvalidMessage("data_not_object", f"data (argument 3) is a {type(data).__name__}, not an object")
    event: PluginEvent = {
        "distinct_id": distinct_id,
        "ip": ip,
        "site_url": site_url,
        "team_id": team_id,
        "now": now,
        # A producer sending 6 args got kwargs ({}) here in the original: not a time.
        "sent_at": sent_at if isinstance(sent_at, str) else None,
    }
    event.update(data)
    event["team_id"] = team_id_of(event.get("team_id"))
    if event.get("distinct_id") is not None:
        event["distinct_id"] = js_string(event["distinct_id"])
    if not event.get("uuid"):
        event["uuid"] = str(derived_uuid(task_id, event.get("now")))
    return event


def team_id_of(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise InvalidMessage("bad_team_id", f"team_id {value!r} is not an integer")


def derived_uuid(task_id: bytes, now: Any) -> str:
    """A UUIDT-shaped uuid that is the same for every delivery of one message.

    The time part is ``now`` (when the capture endpoint received the event),
    so these ids sort like fresh UUIDTs; the other ten bytes come from a hash
    of the task id."""
    prefix = _time_hex(now) if isinstance(now, str) else _NO_TIME
    digest = hashlib.blake2b(task_id, digest_size=10).hexdigest()
    return f"{prefix[:8]}-{prefix[8:]}-{digest[:4]}-{digest[4:8]}-{digest[8:]}"


_NO_TIME = "0" * 12


@functools.lru_cache(maxsize=1024)
def _time_hex(now: str) -> str:
    # The events of one request share their ``now``: parsed once, not per event.
    try:
        millis = int(datetime.fromisoformat(now.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return _NO_TIME
    return (max(millis, 0) & 0xFFFF_FFFF_FFFF).to_bytes(6, "big").hex()
