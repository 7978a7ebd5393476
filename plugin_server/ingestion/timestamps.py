"""When an event happened: timestamp / sent_at / now / offset.

Every datetime here is timezone-aware UTC. Texts without an offset are read
as UTC. A timestamp that cannot be read, or that Python cannot represent
(the year 30000), is treated as absent: the event is stored at ``now`` and
the caller counts it, so one bad client clock never costs an event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any


def parse_iso(value: object) -> datetime | None:
    """An ISO-8601 text as an aware UTC datetime, or None if it is not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        # 9999-12-31T23:00:00-05:00 is past datetime.max once in UTC.
        return None


def truncate_to_ms(value: datetime) -> datetime:
    """Millisecond precision, as the original wrote timestamps (ISO text with milliseconds)."""
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


@dataclass(frozen=True, slots=True)
class EventTime:
    """The computed time of an event; ``ignored`` names an input that could not be used."""

    timestamp: datetime
    ignored: str | None = None


def event_time(data: dict[str, Any], now: datetime, sent_at: datetime | None) -> EventTime:
    """The timestamp of ``data``, truncated to milliseconds."""
    ignored: str | None = None
    raw_timestamp = data.get("timestamp")
    if raw_timestamp:
        timestamp = parse_iso(raw_timestamp)
        if timestamp is None:
            ignored = "timestamp"
        else:
            if sent_at is not None:
                try:
                    # The client's clock skew cancels out: how long before sending the
                    # event happened, applied to when the server received it.
                    return EventTime(truncate_to_ms(now + (timestamp - sent_at)))
                except OverflowError:
                    ignored = "sent_at"
            return EventTime(truncate_to_ms(timestamp), ignored)
    offset = data.get("offset")
    if offset:
        if isinstance(offset, (int, float)) and not isinstance(offset, bool) and math.isfinite(offset):
            try:
                return EventTime(truncate_to_ms(now - timedelta(milliseconds=offset)), ignored)
            except OverflowError:
                pass
        ignored = ignored or "offset"
    return EventTime(truncate_to_ms(now), ignored)


def format_iso(value: datetime) -> str:
    """``2021-05-17T09:59:59.000Z``: Postgres-pipeline texts and anything read back."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def format_clickhouse(value: datetime) -> str:
    """``2021-05-17 09:59:59.000``: Kafka events, recordings and new persons."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def format_clickhouse_seconds(value: datetime) -> str:
    """``2021-05-17 09:59:59``: Kafka person updates."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
