"""When an event happened: timestamp, sent_at, now and offset (spec: ingestion.md §3.3, §7)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from plugin_server.ingestion.timestamps import (
    EventTime,
    event_time,
    format_clickhouse,
    format_clickhouse_seconds,
    format_iso,
    parse_iso,
)

NOW = datetime(2021, 5, 17, 10, 0, tzinfo=timezone.utc)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def test_client_clock_skew_is_corrected_with_sent_at() -> None:
    """A client 5 min fast that sent an event 6 min after it happened: stored 6 min before now, zones converted."""
    sent_at = utc("2021-05-17T10:05:00+00:00")
    assert event_time({"timestamp": "2021-05-17T11:59:00+02:00"}, NOW, sent_at) == EventTime(utc("2021-05-17T09:54:00+00:00"))


def test_timestamp_without_sent_at_is_kept_even_in_the_future() -> None:
    """Without sent_at the client's timestamp is stored as it is."""
    assert event_time({"timestamp": "2021-05-18T08:00:00Z"}, NOW, None) == EventTime(utc("2021-05-18T08:00:00+00:00"))


@pytest.mark.parametrize("sent_at", [None, NOW], ids=["without sent_at", "with sent_at"])
def test_offset_is_subtracted_from_now(sent_at: datetime | None) -> None:
    """No timestamp and offset 1500 ms: now − 1.5 s, whatever sent_at is."""
    now = utc("2021-05-17T10:00:00.500+00:00")
    assert event_time({"offset": 1500}, now, sent_at) == EventTime(utc("2021-05-17T09:59:59+00:00"))


def test_nothing_given_means_now() -> None:
    """Neither timestamp nor offset: the event happened when the server received it."""
    assert event_time({}, NOW, NOW) == EventTime(NOW)


def test_naive_texts_are_read_as_utc() -> None:
    """A timestamp without an offset is UTC, and mixing it with an aware sent_at works."""
    assert parse_iso("2021-05-17T10:00:00") == NOW
    assert event_time({"timestamp": "2021-05-17T09:00:00"}, NOW, utc("2021-05-17T09:30:00+00:00")) == EventTime(
        utc("2021-05-17T09:30:00+00:00")
    )


@pytest.mark.parametrize(
    ("data", "ignored"),
    [
        ({"timestamp": "30000-01-01T00:00:00Z"}, "timestamp"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 1621245600000}, "timestamp"),
        ({"offset": "soon"}, "offset"),
        ({"offset": 1e300}, "offset"),
    ],
    ids=["year 30000", "not a date", "a number", "text offset", "huge offset"],
)
def test_unusable_inputs_fall_back_to_now_and_say_so(data: dict[str, object], ignored: str) -> None:
    """A timestamp or offset that cannot be used leaves the event at `now`, naming what was ignored."""
    assert event_time(data, NOW, None) == EventTime(NOW, ignored)


def test_unusable_timestamp_still_honours_offset() -> None:
    """An unreadable timestamp counts as absent: a valid offset then applies."""
    assert event_time({"timestamp": "nope", "offset": 1000}, NOW, None) == EventTime(utc("2021-05-17T09:59:59+00:00"), "timestamp")


def test_skew_correction_that_overflows_falls_back_to_the_timestamp() -> None:
    """If now + (timestamp − sent_at) is past year 9999 the client timestamp is used."""
    result = event_time({"timestamp": "9999-01-01T00:00:00Z"}, NOW, utc("2000-01-01T00:00:00+00:00"))
    assert result == EventTime(utc("9999-01-01T00:00:00+00:00"), "sent_at")


def test_times_are_kept_to_the_millisecond() -> None:
    """Stored times have millisecond precision, as the original's ISO texts."""
    assert event_time({"timestamp": "2021-05-17T10:00:00.123456Z"}, NOW, None).timestamp.microsecond == 123000


def test_formats() -> None:
    """ISO with milliseconds and Z; ClickHouse with and without milliseconds."""
    moment = utc("2021-05-17T09:59:59.007+00:00")
    assert format_iso(moment) == "2021-05-17T09:59:59.007Z"
    assert format_clickhouse(moment) == "2021-05-17 09:59:59.007"
    assert format_clickhouse_seconds(moment) == "2021-05-17 09:59:59"
