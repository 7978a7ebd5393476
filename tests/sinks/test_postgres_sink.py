"""The Postgres sink: events, element groups and recordings in a few statements (spec: ingestion.md §3.5, §3.7, §5.2)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from plugin_server.ingestion.elements import Element, elements_hash
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.models import Element as ElementRow, ElementGroup, Event, SessionRecordingEvent
from plugin_server.sinks.base import PreparedBatch, PreparedEvent, PreparedRecording
from plugin_server.sinks.postgres import PostgresSink
from tests.factories import create_team

pytestmark = pytest.mark.django_db

WHEN = datetime(2021, 5, 17, 9, 59, 59, 7000, tzinfo=timezone.utc)


def prepared_event(team_id: int, elements: list[Element] | None = None, **fields: object) -> PreparedEvent:
    values: dict[str, object] = {
        "uuid": uuidt.text(),
        "team_id": team_id,
        "distinct_id": "d",
        "event": "$autocapture",
        "properties": {"a": 1, "nested": {"b": [1, "two", None]}, "text": "ü ' \" \\"},
        "timestamp": WHEN,
        "elements": elements or [],
    }
    values.update(fields)
    return PreparedEvent(**values)  # type: ignore[arg-type]


def write(sink: PostgresSink, batch: PreparedBatch) -> None:
    with transaction.atomic():
        sink.write(batch)


def test_events_are_stored_as_prepared() -> None:
    """Every column of posthog_event as prepared; created_at equals the timestamp; no elements → hash ""."""
    team = create_team()
    event = prepared_event(team.id)
    write(PostgresSink(), PreparedBatch(events=[event]))
    row = Event.objects.get(team=team)
    assert (row.event, row.distinct_id, row.properties, row.timestamp, row.created_at) == (
        "$autocapture", "d", event.properties, WHEN, WHEN
    )
    assert (row.elements, row.elements_hash) == ([], "")


def test_elements_of_events_share_groups() -> None:
    """Events with the same elements share one group; its elements are written once, in order."""
    team = create_team()
    elements = [Element(tag_name="a", attr_class=["x", "y"], order=0), Element(tag_name="div", text="t", order=1)]
    batch = PreparedBatch(events=[prepared_event(team.id, elements), prepared_event(team.id, list(elements))])
    write(PostgresSink(), batch)
    assert set(Event.objects.filter(team=team).values_list("elements_hash", flat=True)) == {elements_hash(elements)}
    [group] = ElementGroup.objects.filter(team=team)
    assert list(ElementRow.objects.filter(group=group).order_by("order").values_list("tag_name", "attr_class", "text", "order")) == [
        ("a", ["x", "y"], None, 0),
        ("div", None, "t", 1),
    ]
    assert Event.objects.filter(team=team).first().elements[0] == {"tag_name": "a", "attr_class": ["x", "y"], "attributes": {}}


def test_known_groups_cost_no_query_after_commit(django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    """Once a group's transaction committed, the sink writes its events without touching element groups."""
    team = create_team()
    sink = PostgresSink()
    elements = [Element(tag_name="a")]
    with django_capture_on_commit_callbacks(execute=True):
        write(sink, PreparedBatch(events=[prepared_event(team.id, elements)]))
    with CaptureQueriesContext(connection) as queries:
        write(sink, PreparedBatch(events=[prepared_event(team.id, elements)]))
    assert not any("posthog_element" in query["sql"] for query in queries.captured_queries)


def test_a_rolled_back_group_is_not_remembered() -> None:
    """A group written by a transaction that rolled back is written again next time."""
    team = create_team()
    sink = PostgresSink()
    elements = [Element(tag_name="a")]
    with pytest.raises(RuntimeError), transaction.atomic():
        sink.write(PreparedBatch(events=[prepared_event(team.id, elements)]))
        raise RuntimeError("the batch failed after the sink")
    write(sink, PreparedBatch(events=[prepared_event(team.id, elements)]))
    assert ElementGroup.objects.filter(team=team).count() == 1
    assert ElementRow.objects.filter(group__team=team).count() == 1


def test_recordings_are_stored_with_json_snapshot_data() -> None:
    """A recording keeps its snapshot data (any JSON, null too) and has created_at = timestamp."""
    team = create_team()
    recordings = [
        PreparedRecording(uuidt.text(), team.id, "d", "s1", {"timestamp": 123}, WHEN),
        PreparedRecording(uuidt.text(), team.id, "d", "s2", None, WHEN),
    ]
    write(PostgresSink(), PreparedBatch(recordings=recordings))
    rows = list(SessionRecordingEvent.objects.filter(team=team).order_by("session_id").values_list("session_id", "snapshot_data", "created_at"))
    assert rows == [("s1", {"timestamp": 123}, WHEN), ("s2", None, WHEN)]


def test_a_batch_costs_four_statements_at_most() -> None:
    """Groups, elements, events, recordings: one statement each, for 300 events and 100 recordings."""
    team = create_team()
    events = [prepared_event(team.id, [Element(tag_name="a", nth_child=number % 10)]) for number in range(300)]
    recordings = [PreparedRecording(uuidt.text(), team.id, "d", "s", {"n": number}, WHEN) for number in range(100)]
    with CaptureQueriesContext(connection) as queries:
        write(PostgresSink(), PreparedBatch(events=events, recordings=recordings))
    assert len([query for query in queries.captured_queries if query["sql"].startswith("INSERT")]) == 4
    assert (Event.objects.filter(team=team).count(), ElementGroup.objects.filter(team=team).count()) == (300, 10)
    assert SessionRecordingEvent.objects.filter(team=team).count() == 100


def test_the_sink_reports_rows_and_time(recording_metrics) -> None:  # type: ignore[no-untyped-def]
    """Each write reports its latency and the rows it wrote per table."""
    team = create_team()
    write(PostgresSink(), PreparedBatch(events=[prepared_event(team.id), prepared_event(team.id)]))
    assert recording_metrics.total("ingestion.sink.rows") == 2
    assert [call[1] for call in recording_metrics.calls if call[0] == "timing"] == ["ingestion.sink.write_time"]


def test_each_event_learns_its_row_id() -> None:
    """After a write every prepared event holds the id of its own posthog_event row (used for webhooks)."""
    team = create_team()
    events = [prepared_event(team.id, event=f"event-{number}") for number in range(300)]
    write(PostgresSink(), PreparedBatch(events=events))
    names = dict(Event.objects.filter(team=team).values_list("id", "event"))
    assert [names[event.row_id] for event in events] == [event.event for event in events]
