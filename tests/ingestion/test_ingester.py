"""The Ingester's contract: bad input is returned, never raised or lost; re-delivery is idempotent; batches are cheap."""

from __future__ import annotations

import base64
import json
import math
from datetime import datetime, timezone
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from plugin_server.ingestion.ingester import Ingester, IngestResult
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.metrics import RecordingMetrics
from plugin_server.models import Event, IngestedEventUuid, Person, PropertyDefinition, SessionRecordingEvent, Team
from tests.factories import create_team

pytestmark = pytest.mark.django_db

NOW = datetime(2021, 5, 17, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def team() -> Team:
    return create_team(ingested_event=True)


@pytest.fixture
def ingester() -> Ingester:
    return Ingester(persons=PersonManager(lru_size=10_000), clock=lambda: NOW, max_event_bytes=10_000)


def event_of(team: Team, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event": "$pageview",
        "distinct_id": "user",
        "team_id": team.id,
        "uuid": str(uuidt()),
        "now": NOW.isoformat(),
        "sent_at": None,
        "properties": {},
    }
    event.update(fields)
    return event


def reasons(result: IngestResult) -> list[str]:
    return [error.reason for _, error in result.invalid]


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        (lambda event: "not an event", "not_an_object", "Event is not an object but str"),
        (lambda event: {**event, "properties": ["a"]}, "properties_not_an_object", "Event properties are not an object but list"),
        (lambda event: {k: v for k, v in event.items() if k != "uuid"}, "invalid_uuid", 'Not a valid UUID: "undefined"'),
        (lambda event: {**event, "team_id": "two"}, "invalid_team_id", "Not a valid team id: 'two'"),
        (lambda event: {**event, "team_id": 2**40}, "invalid_team_id", f"Not a valid team id: {2**40}"),
        (lambda event: {**event, "distinct_id": None}, "missing_distinct_id", "Event has no distinct_id"),
        (lambda event: {**event, "distinct_id": "x" * 201}, "distinct_id_too_long", "distinct_id is longer than 200 characters"),
        (
            lambda event: {**event, "event": "$snapshot", "properties": {"$snapshot_data": {}}},
            "invalid_session_id",
            "$snapshot without a usable $session_id: 'null'",
        ),
        (
            lambda event: {**event, "properties": {"blob": "x" * 10_000}},
            "event_too_large",
            "over the limit of 10000 bytes",
        ),
    ],
    ids=["not an object", "properties", "missing uuid", "team id", "huge team id", "no distinct id", "long distinct id", "session id", "too large"],
)
def test_bad_input_is_returned_invalid_and_the_rest_is_stored(team: Team, ingester: Ingester, change, reason, message) -> None:  # type: ignore[no-untyped-def]
    """Each kind of bad event is returned with a stable reason and its message; the good events of the batch are stored."""
    bad = change(event_of(team))
    good = event_of(team, event="good")
    result = ingester.ingest([bad, good])
    [(returned, error)] = result.invalid
    assert returned is bad
    assert error.reason == reason and message in str(error)
    assert result.stored == [good["uuid"]]
    assert list(Event.objects.filter(team=team).values_list("event", flat=True)) == ["good"]


def test_timestamp_in_the_year_30000_is_dead_lettered(team: Team, ingester: Ingester) -> None:
    """A timestamp no column can hold (year 30000) makes the event invalid: returned for the dead-letter store, not stored."""
    bad = event_of(team, timestamp="30000-01-01T00:00:00Z")
    good = event_of(team, event="good")
    result = ingester.ingest([bad, good])
    [(returned, error)] = result.invalid
    assert returned is bad and error.reason == "timestamp_out_of_range"
    assert result.stored == [good["uuid"]]
    assert list(Event.objects.filter(team=team).values_list("event", flat=True)) == ["good"]


def test_an_unreadable_timestamp_is_stored_at_now(team: Team, ingester: Ingester, recording_metrics: RecordingMetrics) -> None:
    """A timestamp that is not a date at all is ignored (spec §3.3): the event is stored at `now` and counted."""
    result = ingester.ingest([event_of(team, timestamp="not a date")])
    assert len(result.stored) == 1
    assert Event.objects.get(team=team).timestamp == NOW
    assert recording_metrics.total("ingestion.timestamp_ignored") == 1


def test_text_postgres_refuses_is_sanitised(team: Team, ingester: Ingester, recording_metrics: RecordingMetrics) -> None:
    """NUL characters, lone surrogates and NaN are replaced (U+FFFD, null), keys made text, instead of failing the batch."""
    properties = {"nul": "a\x00b", "key\x00": 1, "surrogate": "x\ud800y", "nan": math.nan, "nested": [{"deep": "\x00"}], 7: "seven"}
    result = ingester.ingest([event_of(team, event="e\x00", distinct_id="d\x00", properties=properties)])
    assert len(result.stored) == 1 and not result.invalid
    event = Event.objects.get(team=team)
    assert (event.event, event.distinct_id) == ("e\ufffd", "d\ufffd")
    assert event.properties == {
        "nul": "a\ufffdb",
        "key\ufffd": 1,
        "surrogate": "x\ufffdy",
        "nan": None,
        "nested": [{"deep": "\ufffd"}],
        "7": "seven",
    }
    assert recording_metrics.total("ingestion.sanitised") == 1


def test_a_row_the_database_refuses_is_isolated(team: Team, ingester: Ingester, recording_metrics: RecordingMetrics) -> None:
    """An event the database refuses (a 2000-character tag name) is returned invalid; the 7 others are stored."""
    events = [event_of(team, event=f"e{number}", distinct_id=f"user{number}") for number in range(8)]
    events[5]["properties"] = {"$elements": [{"tag_name": "t" * 2000}]}
    result = ingester.ingest(events)
    assert reasons(result) == ["database_rejected"]
    assert result.invalid[0][0] is events[5]
    assert sorted(result.stored) == sorted(event["uuid"] for number, event in enumerate(events) if number != 5)
    assert Event.objects.filter(team=team).count() == 7
    assert recording_metrics.total("ingestion.batch_split") >= 1


def test_a_property_name_too_long_for_a_definition_is_skipped(team: Team, ingester: Ingester) -> None:
    """A property key over 400 characters gets no definition, and the event is still stored."""
    ingester.ingest([event_of(team, properties={"k" * 401: 1, "short": 2})])
    assert Event.objects.filter(team=team).count() == 1
    assert list(PropertyDefinition.objects.filter(team=team).values_list("name", flat=True)) == ["short"]


def test_reingested_batch_stores_nothing_twice(team: Team, ingester: Ingester) -> None:
    """A re-delivered batch is stored once: the second time every uuid is a duplicate and no person changes twice."""
    events = [
        event_of(team, distinct_id="a", properties={"$increment": {"n": 1}}),
        event_of(team, event="$snapshot", distinct_id="a", properties={"$session_id": "s"}),
    ]
    first = ingester.ingest(events)
    second = ingester.ingest(events)
    assert (len(first.stored), first.duplicates, first.invalid) == (2, [], [])
    assert (second.stored, second.duplicates) == ([], [event["uuid"] for event in events])
    assert Event.objects.filter(team=team).count() == 1 and SessionRecordingEvent.objects.filter(team=team).count() == 1
    assert Person.objects.get(team=team).properties == {"n": 1}


def test_same_uuid_twice_in_one_batch_is_stored_once(team: Team, ingester: Ingester) -> None:
    """Two events with one uuid (in any case) in a batch: the first is stored, the second is a duplicate."""
    first = event_of(team, event="first")
    second = event_of(team, event="second", uuid=first["uuid"].upper())
    result = ingester.ingest([first, second])
    assert (result.stored, result.duplicates) == ([first["uuid"]], [second["uuid"]])
    assert list(Event.objects.filter(team=team).values_list("event", flat=True)) == ["first"]


def test_another_teams_event_reusing_a_uuid_is_stored_not_skipped(team: Team, ingester: Ingester) -> None:
    """Dedupe is per (team, uuid): team B's event with a uuid team A already stored is stored for B,
    in a later batch and in the same one; a re-delivery of either is still a duplicate."""
    other = create_team(ingested_event=True)
    first = event_of(team, event="a's")
    assert ingester.ingest([first]).stored == [first["uuid"]]
    reused = event_of(other, event="b's", uuid=first["uuid"])
    third = create_team(ingested_event=True)
    same_batch = [event_of(third, event="c's", uuid=first["uuid"]), event_of(third, event="c's again", uuid=first["uuid"])]
    result = ingester.ingest([reused, *same_batch])
    assert (result.stored, result.duplicates) == ([first["uuid"], first["uuid"]], [first["uuid"]])
    assert ingester.ingest([first, reused]).duplicates == [first["uuid"], first["uuid"]]
    assert [list(Event.objects.filter(team=t).values_list("event", flat=True)) for t in (team, other, third)] == [["a's"], ["b's"], ["c's"]]
    assert IngestedEventUuid.objects.filter(uuid=first["uuid"]).count() == 3


def test_a_valid_event_is_not_a_duplicate_of_an_invalid_one(team: Team, ingester: Ingester) -> None:
    """If the first event with a uuid is invalid, the next event with that uuid is stored, not skipped."""
    bad = event_of(team, event="$snapshot", properties={})
    good = event_of(team, uuid=bad["uuid"])
    result = ingester.ingest([bad, good])
    assert (reasons(result), result.stored, result.duplicates) == (["invalid_session_id"], [good["uuid"]], [])


def batch_of_teams(teams: list[Team], size: int, round_number: int) -> list[dict[str, Any]]:
    """`size` autocapture events spread over the teams, 20 users a team, every 5th with $set."""
    events = []
    for number in range(size):
        team = teams[number % len(teams)]
        properties: dict[str, Any] = {
            "$current_url": f"https://example.com/{number % 7}",
            "$browser": "Firefox",
            "price": number,
            "$elements": [{"tag_name": "a", "nth_child": number % 3, "attr__class": "btn"}, {"tag_name": "div"}],
        }
        if number % 5 == 0:
            properties["$set"] = {"round": round_number}
        events.append(event_of(team, event=f"event-{number % 4}", distinct_id=f"user-{number % 20}", properties=properties))
    return events


def test_query_count_of_a_batch_does_not_grow_with_its_size(ingester: Ingester, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    """With warm caches, 500 events of 10 teams (elements, definitions, $set) cost as many queries as 50, and few."""
    teams = [create_team(ingested_event=True) for _ in range(10)]
    with django_capture_on_commit_callbacks(execute=True):
        ingester.ingest(batch_of_teams(teams, 500, 0))  # warm the caches: teams, definitions, groups, distinct ids
    counts = {}
    for size in (50, 500):
        with django_capture_on_commit_callbacks(execute=True), CaptureQueriesContext(connection) as queries:
            result = ingester.ingest(batch_of_teams(teams, size, size))
        assert len(result.stored) == size and not result.invalid
        counts[size] = len(queries.captured_queries)
    assert counts[50] == counts[500], counts
    assert counts[500] <= 8, counts
    assert Event.objects.filter(team__in=teams).count() == 1050
    rounds = [person.properties.get("round") for person in Person.objects.filter(team__in=teams)]
    assert set(rounds) == {None, 500}, rounds  # the last $set of each person won


def test_webhook_tasks_are_sent_for_teams_with_hooks(ingester: Ingester, redis_client, unique_name: str) -> None:  # type: ignore[no-untyped-def]
    """A team with a Slack webhook gets one post_event_to_webhook task per stored event: [event id, site_url]."""
    from django.conf import settings

    from plugin_server.ingestion.webhooks import CeleryWebhooks

    hooked, quiet = create_team(slack_incoming_webhook="https://hooks.slack.com/x"), create_team()
    ingester.webhooks = CeleryWebhooks(broker_url=settings.REDIS_URL, queue=unique_name)
    events = [event_of(hooked, event="one", site_url="https://app"), event_of(quiet), event_of(hooked, event="two", site_url="https://app")]
    try:
        assert len(ingester.ingest(events).stored) == 3
        messages = [json.loads(raw) for raw in reversed(redis_client.lrange(unique_name, 0, -1))]
    finally:
        redis_client.delete(unique_name)
    assert [message["headers"]["task"] for message in messages] == ["posthog.tasks.webhooks.post_event_to_webhook"] * 2
    calls = [json.loads(base64.b64decode(message["body"]))[0] for message in messages]
    assert [(Event.objects.get(id=event_id).event, site_url) for event_id, site_url in calls] == [("one", "https://app"), ("two", "https://app")]


def test_kafka_pipeline_webhook_tasks_carry_the_event_itself(redis_client, unique_name: str) -> None:  # type: ignore[no-untyped-def]
    """With a sink outside Postgres (no event row ids) the task is ee.tasks.webhooks_ee.post_event_to_webhook_ee with
    [{event, properties, distinct_id, timestamp (ISO), elements_chain}, team_id, site_url] (spec: ingestion.md §3.7)."""
    from django.conf import settings

    from plugin_server.ingestion.webhooks import CeleryWebhooks
    from plugin_server.sinks.memory import MemorySink

    hooked = create_team(slack_incoming_webhook="https://hooks.slack.com/x")
    ingester = Ingester(sink=MemorySink(), persons=PersonManager(lru_size=100), clock=lambda: NOW, max_event_bytes=10_000)
    ingester.webhooks = CeleryWebhooks(broker_url=settings.REDIS_URL, queue=unique_name)
    elements = [{"tag_name": "a", "nth_child": 1, "nth_of_type": 2, "attr__class": "btn"}]
    event = event_of(hooked, event="clicked", site_url="https://app", properties={"$elements": elements, "a": 1})
    event["timestamp"] = "2021-05-17T09:59:59.500Z"
    try:
        assert len(ingester.ingest([event]).stored) == 1
        [message] = [json.loads(raw) for raw in redis_client.lrange(unique_name, 0, -1)]
    finally:
        redis_client.delete(unique_name)
    assert message["headers"]["task"] == "ee.tasks.webhooks_ee.post_event_to_webhook_ee"
    args = json.loads(base64.b64decode(message["body"]))[0]
    assert args == [
        {
            "event": "clicked",
            "properties": {"a": 1},
            "distinct_id": "user",
            "timestamp": "2021-05-17T09:59:59.500Z",
            "elements_chain": 'a.btn:attr__class="btn"nth-child="1"nth-of-type="2"',
        },
        hooked.id,
        "https://app",
    ]


def test_an_unreachable_broker_loses_no_event(ingester: Ingester, recording_metrics: RecordingMetrics) -> None:
    """If the webhook broker is down the events stay stored and the failure is counted, not raised."""
    from plugin_server.ingestion.webhooks import CeleryWebhooks

    team = create_team(slack_incoming_webhook="https://hooks.slack.com/x")
    ingester.webhooks = CeleryWebhooks(broker_url="redis://127.0.0.1:1/0", queue="nowhere")
    assert len(ingester.ingest([event_of(team)]).stored) == 1
    assert Event.objects.filter(team=team).count() == 1
    assert recording_metrics.total("hooks.send_task_failed") == 1


def test_a_database_failure_mid_batch_is_retriable_and_commits_nothing(team: Team, ingester: Ingester) -> None:
    """posthog_event locked by another session past lock_timeout: RetriableError, and neither the uuid claim nor the
    person of the batch is kept; once the lock is gone the same batch is stored."""
    import psycopg

    from plugin_server.exceptions import RetriableError

    params = connection.get_connection_params()
    other = psycopg.connect(**{key: value for key, value in params.items() if key in ("dbname", "user", "password", "host", "port")})
    events = [event_of(team, distinct_id="new-person", properties={"$set": {"a": 1}})]
    try:
        other.execute("LOCK TABLE posthog_event IN ACCESS EXCLUSIVE MODE")
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        with pytest.raises(RetriableError):
            ingester.ingest(events)
    finally:
        other.rollback()
        other.close()
    assert not IngestedEventUuid.objects.filter(team_id=team.id).exists()
    assert not Person.objects.filter(team=team).exists()
    assert len(ingester.ingest(events).stored) == 1
    assert Person.objects.get(team=team).properties == {"a": 1}
