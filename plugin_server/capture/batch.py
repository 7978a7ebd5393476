"""A decoded payload → the events to queue, checked as PostHog's capture checked them.

The project token is looked for where each SDK puts it (query ``token`` /
``api_key`` on GET, form ``api_key`` / ``token``, then in the payload or its
first event: ``$token``, ``token``, ``api_key``, ``properties.token``). The
events are ``batch`` (posthog-python, posthog-ruby), a JSON array (posthog-js'
batches), or the payload itself; on ``/engage/`` a single object is an
``$identify``. Each needs a non-empty distinct id (``$distinct_id``, then
``properties.distinct_id``, then ``distinct_id``; cut to 200 characters) and
an event name. Unlike PostHog's capture, which queued the events before a
bad one and then refused the request, a request is checked whole first and
queued whole or not at all.

``sent_at`` comes from the ``_`` query parameter (posthog-js: milliseconds),
the payload's ``sent_at`` (the server SDKs: ISO 8601) or a form field; one
that cannot be read is left out (the consumer then trusts ``timestamp``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from plugin_server.capture.decode import Payload
from plugin_server.capture.errors import (
    EMPTY_DISTINCT_ID,
    MISSING_DISTINCT_ID,
    MISSING_EVENT,
    CaptureError,
    invalid_payload,
    no_data,
)

MAX_DISTINCT_ID_CHARS = 200
TEST_ENVIRONMENT = "test"


@dataclass(frozen=True, slots=True)
class CapturedEvent:
    """One event as PostHog's capture handed it to the pipeline.

    ``celery_args`` are the seven positional arguments of the task
    ``posthog.tasks.process_event.process_event_with_plugins``.
    """

    distinct_id: str
    ip: str | None
    site_url: str
    data: dict[str, Any]
    team_id: int
    now: str
    sent_at: str | None

    def celery_args(self) -> list[Any]:
        return [self.distinct_id, self.ip, self.site_url, self.data, self.team_id, self.now, self.sent_at]


def find_token(payload: Payload, query: Mapping[str, str], method: str) -> str | None:
    """The project token of the request, wherever its SDK put it."""
    token: object = None
    if method == "GET":
        token = query.get("token") or query.get("api_key")
    token = token or payload.form.get("api_key") or payload.form.get("token")
    data = payload.data
    if not token and isinstance(data, list) and data:
        data = data[0]  # a batch: the first event names the project (Mixpanel Swift SDK, posthog-js)
    if not token and isinstance(data, dict):
        properties = data.get("properties")
        token = (
            data.get("$token")
            or data.get("token")
            or data.get("api_key")
            or (properties.get("token") if isinstance(properties, dict) else None)
        )
    return str(token) if token else None


def parse_sent_at(value: object) -> datetime | None:
    """Digits are epoch seconds (up to 11 digits) or milliseconds; else ISO 8601."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(int(value))
    if not isinstance(value, str) or not value:
        return None
    try:
        if value.isdigit():
            seconds = float(value) / 1000 if len(value) > 11 else int(value)
            return datetime.fromtimestamp(seconds, timezone.utc)
        parsed = datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def find_sent_at(payload: Payload, query: Mapping[str, str]) -> datetime | None:
    if query.get("_"):
        return parse_sent_at(query["_"])
    if isinstance(payload.data, dict) and payload.data.get("sent_at"):
        return parse_sent_at(payload.data["sent_at"])
    return parse_sent_at(payload.form.get("sent_at"))


def raw_events(data: object, path: str) -> list[dict[str, Any]]:
    """The list of raw events a payload carries (not yet checked)."""
    if isinstance(data, dict):
        if data.get("batch"):
            data = data["batch"]
        elif "engage" in path:
            data["event"] = "$identify"  # posthog-js' old people API: make sure it has a name
    events = data if isinstance(data, list) else [data]
    if not events:
        raise no_data()
    if not all(isinstance(event, dict) for event in events):
        raise invalid_payload("every event must be a JSON object")
    return events


def distinct_id_of(event: Mapping[str, Any]) -> str:
    properties = event.get("properties")
    if "$distinct_id" in event:
        value = event["$distinct_id"]
    elif isinstance(properties, dict) and "distinct_id" in properties:
        value = properties["distinct_id"]
    elif "distinct_id" in event:
        value = event["distinct_id"]
    else:
        raise CaptureError(MISSING_DISTINCT_ID, "required", attr="distinct_id")
    if value is None or value == "" or value is False:
        raise CaptureError(EMPTY_DISTINCT_ID, "required", attr="distinct_id")
    return str(value)[:MAX_DISTINCT_ID_CHARS]


def build_events(
    payload: Payload,
    *,
    path: str,
    team_id: int,
    ip: str | None,
    site_url: str,
    now: datetime,
    sent_at: datetime | None,
    test_environment: bool = False,
) -> list[CapturedEvent]:
    """Every event of the payload, checked, as the pipeline gets it; raises :class:`CaptureError`."""
    now_text = now.isoformat()
    sent_at_text = sent_at.isoformat() if sent_at else None
    captured: list[CapturedEvent] = []
    for event in raw_events(payload.data, path):
        properties = event.get("properties")
        if properties is not None and not isinstance(properties, dict):
            raise invalid_payload("`properties` must be a JSON object")
        distinct_id = distinct_id_of(event)
        if not event.get("event"):
            raise CaptureError(MISSING_EVENT, "required", attr="event")
        if not properties:
            event["properties"] = properties = {}
        if test_environment and properties.get("$environment") is None:
            properties["$environment"] = TEST_ENVIRONMENT
        captured.append(CapturedEvent(distinct_id, ip, site_url, event, team_id, now_text, sent_at_text))
    return captured
