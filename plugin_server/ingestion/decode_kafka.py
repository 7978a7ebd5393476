"""Decoding a message of ``KAFKA_CONSUMPTION_TOPIC`` into the event the capture endpoint sent.

The value is JSON ``{uuid, distinct_id, ip, site_url, data, team_id, now,
sent_at[, kafka_offset]}`` where ``data`` is the raw event *as JSON text*
(double-encoded). The event is the top-level fields (without ``data`` and
``kafka_offset``) with the parsed ``data`` laid over them; then an empty
``ip`` / ``site_url`` / ``sent_at`` becomes null and ``distinct_id`` a text.

Everything that cannot become such an event raises
:class:`~plugin_server.exceptions.InvalidMessage` with a stable reason:
``too_large``, ``too_deep``, ``not_json``, ``not_an_object``, ``missing_fields`` (no
``data``, ``team_id`` or ``now``), ``bad_data`` (``data`` is not JSON text,
or its JSON is not an object), ``bad_team_id``. (An unknown team, a bad uuid,
a missing distinct id are the ingester's reasons: docs/ingestion.md.)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from plugin_server import json_codec
from plugin_server.events import PluginEvent
from plugin_server.exceptions import InvalidMessage
from plugin_server.ingestion.decode import DEFAULT_MAX_DEPTH, team_id_of
from plugin_server.ingestion.jsstring import js_string
from plugin_server.ingestion.limits import json_depth_exceeds

REQUIRED_FIELDS = ("data", "team_id", "now")
_DROPPED_FIELDS = ("data", "kafka_offset")


def decode_kafka_message(payload: bytes, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> PluginEvent:
    """The event carried by one ``events_plugin_ingestion`` message, or InvalidMessage.

    ``max_depth`` bounds how deeply the event nests (checked on the text
    before any parser sees it)."""
    if len(payload) > max_bytes:
        raise InvalidMessage("too_large", f"message of {len(payload)} bytes is over the limit of {max_bytes}")
    if json_depth_exceeds(payload, max_depth + 1):
        raise InvalidMessage("too_deep", f"the message nests deeper than {max_depth} levels")
    try:
        message = json_codec.loads(payload)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidMessage("not_json", f"message is not JSON text: {error}") from error
    if not isinstance(message, dict):
        raise InvalidMessage("not_an_object", f"message is a {type(message).__name__}, not an object")
    missing = [name for name in REQUIRED_FIELDS if name not in message]
    if missing:
        raise InvalidMessage("missing_fields", f"message lacks {', '.join(missing)}", _team_or_none(message.get("team_id")))
    data = _data(message["data"], _team_or_none(message.get("team_id")), max_depth)
    event: PluginEvent = {key: value for key, value in message.items() if key not in _DROPPED_FIELDS}
    event.update(data)
    event["team_id"] = team_id_of(event.get("team_id"))
    for field in ("ip", "site_url"):
        if not event.get(field):
            event[field] = None
    if not isinstance(event.get("sent_at"), str) or not event["sent_at"]:
        event["sent_at"] = None
    if event.get("distinct_id") is not None:
        event["distinct_id"] = js_string(event["distinct_id"])  # JavaScript String(): true → "true", 3.0 → "3"
    return event


def _data(value: Any, team_id: int | None, max_depth: int) -> dict[str, Any]:
    if isinstance(value, dict):
        # Already an object (a producer that did not double-encode): take it as it is.
        return value
    if not isinstance(value, str):
        raise InvalidMessage("bad_data", f"data is a {type(value).__name__}, not JSON text", team_id)
    if json_depth_exceeds(value.encode("utf-8", "surrogatepass"), max_depth):
        raise InvalidMessage("too_deep", f"the event nests deeper than {max_depth} levels", team_id)
    try:
        data = json_codec.loads(value)
    except (ValueError, json.JSONDecodeError) as error:
        raise InvalidMessage("bad_data", f"data is not JSON text: {error}", team_id) from error
    if not isinstance(data, dict):
        raise InvalidMessage("bad_data", f"data holds a {type(data).__name__}, not an object", team_id)
    return data


def _team_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def person_partition_key(team_id: object, distinct_id: object) -> str:
    """The key of every message on the consumption topic: the SHA-256 of ``<team_id>:<distinct_id>``.

    The same person always gets the same key, so one partition and one order
    (the capture endpoint, ``posthog.capture`` and a replayed dead letter all
    use it)."""
    return hashlib.sha256(f"{team_id}:{distinct_id}".encode("utf-8", "surrogatepass")).hexdigest()


def partition_key(event_or_message: dict[str, Any]) -> str:
    """:func:`person_partition_key` of an event or a consumption-topic message."""
    return person_partition_key(event_or_message.get("team_id"), event_or_message.get("distinct_id"))
