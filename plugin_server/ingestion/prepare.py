"""From a plugin event to the rows to store.

:func:`check_event` is the gate: it turns every kind of bad input into an
:class:`InvalidMessage` with a stable reason (never a crash, never a silent
drop) and makes the event safe for Postgres. :func:`prepare_event` then does
the per-event work that needs no I/O: event name, elements, ``$ip``,
campaign and ``$initial_*`` properties, timestamps, the person update.
Teams and definitions are looked up per batch by the ingester.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from plugin_server import json_codec
from plugin_server.events import PluginEvent
from plugin_server.exceptions import InvalidMessage
from plugin_server.ingestion.elements import extract_elements
from plugin_server.ingestion.jsstring import js_json, js_string
from plugin_server.ingestion.persons import PersonUpdate
from plugin_server.ingestion.teams import TeamInfo
from plugin_server.ingestion.timestamps import event_time, parse_iso
from plugin_server.ingestion.uuidt import is_valid_uuid, render_for_error
from plugin_server.sinks.base import PreparedEvent, PreparedRecording

EVENT_NAME_MAX_LENGTH = 200
DISTINCT_ID_MAX_LENGTH = 200  # posthog_event.distinct_id, posthog_sessionrecordingevent.distinct_id
SESSION_ID_MAX_LENGTH = 200
CAMPAIGN_KEYS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
INITIAL_KEYS = (*CAMPAIGN_KEYS, "$browser", "$browser_version", "$device_type", "$current_url", "$os", "$referring_domain", "$referrer")
REPLACEMENT_CHARACTER = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
# An ISO date whose year has five or more digits (the year 30000): no database
# column can hold it, and "now" would be a guess, so the event is dead-lettered
# for an operator to look at (a merely unreadable timestamp is ignored).
_YEAR_OUT_OF_RANGE = re.compile(r"^\s*[+-]?\d{5,}-")


class Reason(str, enum.Enum):
    """Why an event is dead-lettered: stable codes, stored on the dead letter and counted."""

    NOT_AN_OBJECT = "not_an_object"
    PROPERTIES_NOT_AN_OBJECT = "properties_not_an_object"
    INVALID_UUID = "invalid_uuid"
    INVALID_TEAM_ID = "invalid_team_id"
    UNKNOWN_TEAM = "unknown_team"
    MISSING_DISTINCT_ID = "missing_distinct_id"
    DISTINCT_ID_TOO_LONG = "distinct_id_too_long"
    INVALID_SESSION_ID = "invalid_session_id"
    EVENT_TOO_LARGE = "event_too_large"
    DATABASE_REJECTED = "database_rejected"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"


def invalid(reason: Reason, message: str, team_id: int | None = None) -> InvalidMessage:
    return InvalidMessage(reason.value, message, team_id)


def _sanitised(value: Any) -> Any:
    # Postgres refuses NUL in text and jsonb, any text that is not UTF-8 (lone
    # surrogates from JSON "\ud800"), and NaN/Infinity in jsonb. Replace them
    # rather than lose the event; the rest of the value is kept as it was.
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", REPLACEMENT_CHARACTER)
        if not value.isascii():
            value = _SURROGATE.sub(REPLACEMENT_CHARACTER, value)
        return value
    if isinstance(value, dict):
        return {_sanitised(str(key)): _sanitised(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitised(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _needs_sanitising(event: PluginEvent, max_bytes: int) -> tuple[bool, int]:
    """Whether the event holds something Postgres refuses, and the size of its JSON
    (exact when over ``max_bytes``; when under, possibly a smaller figure, also under)."""
    # Fast path, ~5x cheaper than json.dumps: orjson's compact encoding fails on
    # a lone surrogate or a key json would have to convert; with no "null"
    # (NaN comes out as null) and no "\u0000" in it, the event is clean. json's
    # text (", " and ": " separators, floats spelt by repr) is at most twice as
    # long, so 3x under the limit is surely under it.
    # Top-level nulls (an empty ip, site_url or sent_at of a Kafka message) are
    # left out of this test, they cannot hide a NaN, and added to the size
    # (json's '"key": null, ' is at most its key's length plus 12).
    present = {key: value for key, value in event.items() if value is not None}
    nulls = sum(len(str(key)) + 12 for key in event if key not in present)
    compact = json_codec.compact_utf8(present)
    if compact is not None and b"null" not in compact and b"\\u0000" not in compact and 3 * (len(compact) + nulls) <= max_bytes:
        return False, len(compact) + nulls
    try:
        text = json.dumps(event, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:
        return True, len(json.dumps(event, ensure_ascii=False, default=str).encode("utf-8", "replace"))
    if "\\u0000" in text:
        return True, len(text)
    if text.isascii():
        return False, len(text)
    try:
        return False, len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return True, len(text.encode("utf-8", "replace"))


def check_event(event: object, max_bytes: int) -> tuple[PluginEvent, bool]:
    """The event, safe to prepare, and whether it had to be sanitised; or raise InvalidMessage."""
    if not isinstance(event, dict):
        raise invalid(Reason.NOT_AN_OBJECT, f"Event is not an object but {type(event).__name__}")
    team_id = event.get("team_id")
    if isinstance(team_id, bool) or not isinstance(team_id, (int, str)) or not str(team_id).lstrip("-").isdigit():
        raise invalid(Reason.INVALID_TEAM_ID, f"Not a valid team id: {render_for_error(team_id)!r}")
    team_id = int(team_id)
    if not 0 < team_id < 2**31:  # posthog_team.id is a serial: anything else would fail the batch's team query
        raise invalid(Reason.INVALID_TEAM_ID, f"Not a valid team id: {team_id}")
    if "uuid" not in event:
        raise invalid(Reason.INVALID_UUID, 'Not a valid UUID: "undefined"', team_id)
    if not is_valid_uuid(event["uuid"]):
        raise invalid(Reason.INVALID_UUID, f'Not a valid UUID: "{render_for_error(event["uuid"])}"', team_id)
    if event.get("distinct_id") is None:
        raise invalid(Reason.MISSING_DISTINCT_ID, "Event has no distinct_id", team_id)
    timestamp = event.get("timestamp")
    if isinstance(timestamp, str) and _YEAR_OUT_OF_RANGE.match(timestamp):
        raise invalid(Reason.TIMESTAMP_OUT_OF_RANGE, f"Timestamp out of range: {timestamp[:40]!r}", team_id)
    properties = event.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise invalid(Reason.PROPERTIES_NOT_AN_OBJECT, f"Event properties are not an object but {type(properties).__name__}", team_id)
    dirty, size = _needs_sanitising(event, max_bytes)
    if size > max_bytes:
        raise invalid(Reason.EVENT_TOO_LARGE, f"Event of {size} bytes is over the limit of {max_bytes} bytes", team_id)
    # A plugin may have used a non-text key; JSON would turn it into text, so do the same now.
    clean: PluginEvent = _sanitised(event) if dirty or (properties and not all(type(key) is str for key in properties)) else event
    checked = {**clean, "team_id": team_id, "distinct_id": js_string(clean["distinct_id"])}
    if len(checked["distinct_id"]) > DISTINCT_ID_MAX_LENGTH:
        raise invalid(Reason.DISTINCT_ID_TOO_LONG, f"distinct_id is longer than {DISTINCT_ID_MAX_LENGTH} characters", team_id)
    return checked, dirty


def event_name(value: Any) -> str:
    """A non-text name as JavaScript's compact JSON.stringify, first 200 characters.

    (``3.0`` → ``"3"``, ``true`` → ``"true"``, ``{"a": 1.0}`` → ``'{"a":1}'``.)"""
    if isinstance(value, str):
        return value[:EVENT_NAME_MAX_LENGTH]
    return js_json(value)[:EVENT_NAME_MAX_LENGTH]


def add_campaign_properties(properties: dict[str, Any]) -> None:
    """Utm keys into ``$set``, ``$initial_*`` into ``$set_once`` (only if a utm key is present)."""
    campaign = [key for key in CAMPAIGN_KEYS if key in properties]
    if not campaign:
        return
    to_set = dict(properties["$set"]) if isinstance(properties.get("$set"), dict) else {}
    to_set.update((key, properties[key]) for key in campaign)
    to_set_once = dict(properties["$set_once"]) if isinstance(properties.get("$set_once"), dict) else {}
    to_set_once.update((f"$initial_{key.removeprefix('$')}", properties[key]) for key in INITIAL_KEYS if key in properties)
    properties["$set"] = to_set
    properties["$set_once"] = to_set_once


@dataclass(slots=True)
class PreparedItem:
    """One event's prepared row, its person update and its index in the batch."""

    index: int
    row: PreparedEvent | PreparedRecording
    person_update: PersonUpdate
    timestamp_ignored: str | None


def prepare_event(index: int, event: PluginEvent, team: TeamInfo, received: datetime) -> PreparedItem:
    """Everything preparing does to one checked event, without I/O.

    ``received`` is the current time, the fallback for a missing ``now``."""
    team_id = team.id
    distinct_id: str = event["distinct_id"]
    properties: dict[str, Any] = dict(event.get("properties") or {})
    for key in ("$set", "$set_once"):
        if event.get(key):
            properties[key] = event[key]
    now = parse_iso(event.get("now")) or received
    sent_at = parse_iso(event.get("sent_at"))
    when = event_time(event, now, sent_at)
    name = event_name(event.get("event"))
    event_uuid = event["uuid"]
    update = PersonUpdate(
        team_id=team_id,
        distinct_id=distinct_id,
        event=name,
        properties=properties,
        new_person_created_at=sent_at or received,
    )
    if name == "$snapshot":
        session_id = properties.get("$session_id")
        if session_id is None or isinstance(session_id, (dict, list)) or len(str(session_id)) > SESSION_ID_MAX_LENGTH:
            raise invalid(Reason.INVALID_SESSION_ID, f"$snapshot without a usable $session_id: {render_for_error(session_id)[:50]!r}", team_id)
        recording = PreparedRecording(
            uuid=event_uuid.lower(),
            team_id=team_id,
            distinct_id=distinct_id,
            session_id=js_string(session_id),
            snapshot_data=properties.get("$snapshot_data"),
            timestamp=when.timestamp,
        )
        return PreparedItem(index, recording, update, when.ignored)

    elements = extract_elements(properties.get("$elements"))
    if elements is not None:
        del properties["$elements"]
    ip = event.get("ip")
    if ip and not team.anonymize_ips and "$ip" not in properties:
        properties["$ip"] = ip
    row = PreparedEvent(
        uuid=event_uuid.lower(),
        team_id=team_id,
        distinct_id=distinct_id,
        event=name,
        properties=properties,
        timestamp=when.timestamp,
        elements=elements or [],
        site_url=event.get("site_url"),
    )
    return PreparedItem(index, row, update, when.ignored)


