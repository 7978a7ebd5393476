"""The events processor end to end on Postgres (acceptance.md "Event processing" and "Postgres-only")."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from plugin_server.ingestion.elements import Element
from plugin_server.ingestion.ingester import Ingester, IngestResult
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.teams import TeamInfo
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.models import (
    Element as ElementRow,
    Event,
    EventDefinition,
    OrganizationMembership,
    Person,
    PropertyDefinition,
    SessionRecordingEvent,
    Team,
    User,
)
from plugin_server.sinks.postgres import PostgresSink
from tests.factories import create_team, store_element_group
from tests.ingestion.person_helpers import create_person, distinct_ids_of

pytestmark = pytest.mark.django_db

ELEMENTS = [
    {"tag_name": "a", "nth_child": 1, "nth_of_type": 2, "attr__class": "btn btn-sm"},
    {"tag_name": "div", "nth_child": 1, "nth_of_type": 2, "$el_text": "💻"},
]


class RecordingTelemetry:
    """Keeps every first-event report."""

    def __init__(self) -> None:
        self.reports: list[tuple[TeamInfo, dict[str, Any]]] = []

    def first_team_event(self, team: TeamInfo, properties: dict[str, Any]) -> None:
        self.reports.append((team, properties))


@pytest.fixture
def team() -> Team:
    return create_team(ingested_event=True, anonymize_ips=False)


@pytest.fixture
def ingester() -> Ingester:
    return Ingester(persons=PersonManager(lru_size=100))


def process_event(
    ingester: Ingester,
    distinct_id: Any,
    ip: str | None,
    data: dict[str, Any],
    team_id: int,
    now: datetime | None = None,
    sent_at: datetime | None | str = "now",
    event_uuid: Any = "new",
) -> IngestResult:
    """The original's processEvent(distinctId, ip, siteUrl, data, teamId, now, sentAt, uuid), as one batch."""
    now = now or datetime.now(timezone.utc)
    if sent_at == "now":
        sent_at = now
    event = {
        "distinct_id": distinct_id,
        "ip": ip,
        "site_url": "",
        "team_id": team_id,
        "now": now.isoformat(),
        "sent_at": sent_at.isoformat() if isinstance(sent_at, datetime) else sent_at,
        **data,
    }
    if event_uuid != "new":
        event["uuid"] = event_uuid
    else:
        event["uuid"] = str(uuidt())
    return ingester.ingest([event])


def stored(result: IngestResult) -> IngestResult:
    assert not result.invalid, result.invalid
    return result


def test_capture_new_person(team: Team, ingester: Ingester) -> None:
    """capture new person: utm and $initial_* properties, elements and their hash, definitions in order."""
    properties = {
        "distinct_id": 2,
        "token": team.api_token,
        "$browser": "Chrome",
        "$current_url": "https://test.com",
        "$os": "Mac OS X",
        "$browser_version": 80,
        "$initial_referring_domain": "https://google.com",
        "$initial_referrer_url": "https://google.com/?q=posthog",
        "utm_medium": "twitter",
        "$elements": ELEMENTS,
    }
    stored(process_event(ingester, "2", "127.0.0.1", {"event": "$autocapture", "properties": properties}, team.id))
    [person] = Person.objects.filter(team=team)
    assert person.properties == {
        "$initial_browser": "Chrome",
        "$initial_browser_version": 80,
        "$initial_utm_medium": "twitter",
        "$initial_current_url": "https://test.com",
        "$initial_os": "Mac OS X",
        "utm_medium": "twitter",
    }
    second = {"event": "$autocapture", "properties": {"distinct_id": 2, "token": team.api_token, "utm_medium": "instagram", "$elements": ELEMENTS}}
    stored(process_event(ingester, "2", "127.0.0.1", second, team.id))
    assert Event.objects.filter(team=team).count() == 2
    [person] = Person.objects.filter(team=team)
    assert person.properties["utm_medium"] == "instagram"
    assert person.properties["$initial_utm_medium"] == "twitter"
    first = Event.objects.filter(team=team).order_by("id").first()
    assert (first.distinct_id, first.event) == ("2", "$autocapture")
    assert distinct_ids_of(person) == ["2"]
    assert first.elements_hash == "0679137c0cd2408a2906839143e7a71f"
    elements = list(ElementRow.objects.filter(group__team=team, group__hash=first.elements_hash).order_by("order"))
    assert [(e.tag_name, e.attr_class, e.text, e.order) for e in elements] == [
        ("a", ["btn", "btn-sm"], None, 0),
        ("div", None, "💻", 1),
    ]
    assert list(EventDefinition.objects.filter(team=team).values_list("name", "volume_30_day", "query_usage_30_day")) == [
        ("$autocapture", None, None)
    ]
    definitions = list(PropertyDefinition.objects.filter(team=team).order_by("id").values_list("name", "is_numerical", "volume_30_day"))
    assert definitions == [
        ("distinct_id", True, None),
        ("token", False, None),
        ("$browser", False, None),
        ("$current_url", False, None),
        ("$os", False, None),
        ("$browser_version", True, None),
        ("$initial_referring_domain", False, None),
        ("$initial_referrer_url", False, None),
        ("utm_medium", False, None),
        ("$ip", False, None),
    ]


def test_capture_bad_team(ingester: Ingester) -> None:
    """capture bad team: an unknown team is returned invalid with the original's message, nothing stored."""
    result = process_event(ingester, "asdfasdfasdf", "", {"event": "$pageview", "properties": {}}, 1337)
    [(event, error)] = result.invalid
    assert (error.reason, str(error)) == ("unknown_team", "No team found with ID 1337. Can't ingest event.")
    assert event["team_id"] == 1337 and not Event.objects.exists() and not Person.objects.exists()


def test_capture_no_element(team: Team, ingester: Ingester) -> None:
    """capture no element: a known person's $pageview is stored and its distinct ids are unchanged."""
    person = create_person(team, ["asdfasdfasdf"])
    stored(process_event(ingester, "asdfasdfasdf", "", {"event": "$pageview", "properties": {}}, team.id))
    assert distinct_ids_of(person) == ["asdfasdfasdf"]
    [event] = Event.objects.filter(team=team)
    assert (event.event, event.elements_hash, event.elements) == ("$pageview", "", [])


def test_capture_no_sent_at(team: Team, ingester: Ingester) -> None:
    """capture no sent_at: the client timestamp is stored as is, even in the future."""
    now = datetime.now(timezone.utc)
    tomorrow = now + timedelta(days=1, hours=2)
    data = {"event": "$autocapture", "timestamp": tomorrow.isoformat(), "properties": {}}
    stored(process_event(ingester, "asdfasdfasdf", "", data, team.id, now=now, sent_at=None))
    assert abs(Event.objects.get(team=team).timestamp - tomorrow) < timedelta(seconds=1)


@pytest.mark.parametrize(
    ("ip", "properties", "anonymize", "expected"),
    [
        (None, {}, False, None),
        ("11.12.13.14", {}, False, "11.12.13.14"),
        ("11.12.13.14", {"$ip": "1.0.0.1"}, False, "1.0.0.1"),
        ("11.12.13.14", {}, True, None),
    ],
    ids=["ip none", "ip capture", "ip override", "anonymized ip capture"],
)
def test_ip(ingester: Ingester, ip: str | None, properties: dict[str, Any], anonymize: bool, expected: str | None) -> None:
    """$ip comes from the request unless the client sent one or the team anonymizes IPs."""
    team = create_team(ingested_event=True, anonymize_ips=anonymize)
    stored(process_event(ingester, "asdfasdfasdf", ip, {"event": "$pageview", "properties": properties}, team.id))
    assert Event.objects.get(team=team).properties.get("$ip", None) == expected
    assert ("$ip" in Event.objects.get(team=team).properties) == (expected is not None)


def test_alias(team: Team, ingester: Ingester) -> None:
    """alias: $create_alias from a new id adds it to the person of the alias."""
    person = create_person(team, ["old_distinct_id"])
    stored(process_event(ingester, "new_distinct_id", "", {"event": "$create_alias", "properties": {"alias": "old_distinct_id"}}, team.id))
    assert Event.objects.filter(team=team).count() == 1
    assert distinct_ids_of(person) == ["old_distinct_id", "new_distinct_id"]


def test_alias_reverse(team: Team, ingester: Ingester) -> None:
    """alias reverse: $create_alias from the known id adds the new alias to its person."""
    person = create_person(team, ["old_distinct_id"])
    stored(process_event(ingester, "old_distinct_id", "", {"event": "$create_alias", "properties": {"alias": "new_distinct_id"}}, team.id))
    assert Event.objects.filter(team=team).count() == 1
    assert distinct_ids_of(person) == ["old_distinct_id", "new_distinct_id"]


def test_alias_before_person(team: Team, ingester: Ingester) -> None:
    """alias before person: one person is created with [new, old] in that order."""
    stored(process_event(ingester, "new_distinct_id", "", {"event": "$create_alias", "properties": {"alias": "old_distinct_id"}}, team.id))
    [person] = Person.objects.filter(team=team)
    assert Event.objects.filter(team=team).count() == 1
    assert distinct_ids_of(person) == ["new_distinct_id", "old_distinct_id"]


def test_alias_both_existing(team: Team, ingester: Ingester) -> None:
    """alias both existing: the two persons are merged into one with both ids."""
    create_person(team, ["old_distinct_id"])
    create_person(team, ["new_distinct_id"])
    stored(process_event(ingester, "new_distinct_id", "", {"event": "$create_alias", "properties": {"alias": "old_distinct_id"}}, team.id))
    [person] = Person.objects.filter(team=team)
    assert Event.objects.filter(team=team).count() == 1
    assert distinct_ids_of(person) == ["old_distinct_id", "new_distinct_id"]


def test_offset_timestamp(team: Team, ingester: Ingester) -> None:
    """offset timestamp: now − offset ms, whatever sent_at says."""
    now = datetime(2020, 1, 1, 12, 0, 5, 200_000, tzinfo=timezone.utc)
    stored(process_event(ingester, "distinct_id", "", {"event": "$autocapture", "offset": 150, "properties": {}}, team.id, now=now))
    assert Event.objects.get(team=team).timestamp == datetime(2020, 1, 1, 12, 0, 5, 50_000, tzinfo=timezone.utc)


def test_capture_first_team_event(ingester: Ingester) -> None:
    """capture first team event: the team is flagged ingested and telemetry reports it once."""
    team = create_team(ingested_event=False)
    user = User.objects.create(distinct_id="plugin_test_user_distinct_id_1001")
    OrganizationMembership.objects.create(organization=team.organization, user=user, level=15)
    telemetry = RecordingTelemetry()
    ingester = Ingester(persons=PersonManager(lru_size=100), telemetry=telemetry)
    data = {"event": "$autocapture", "properties": {"$elements": ELEMENTS[:1]}}
    stored(process_event(ingester, "2", "", data, team.id))
    [(reported, properties)] = telemetry.reports
    assert reported.uuid == team.uuid
    assert properties == {"sdk": None, "realm": None, "host": None}
    assert ingester.teams.organization_user_distinct_ids(reported.organization_id) == ["plugin_test_user_distinct_id_1001"]
    team.refresh_from_db()
    assert team.ingested_event is True
    assert Event.objects.get(team=team).elements_hash == "a89021a60b3497d24e93ae181fba01aa"
    stored(process_event(ingester, "2", "", data, team.id))
    assert len(telemetry.reports) == 1


def test_snapshot_event_stored_as_session_recording_event(team: Team, ingester: Ingester) -> None:
    """$snapshot is stored as a session recording event, not as an event; created_at = timestamp."""
    data = {"event": "$snapshot", "properties": {"$session_id": "abcf-efg", "$snapshot_data": {"timestamp": 123}}}
    stored(process_event(ingester, "some-id", "", data, team.id))
    assert not Event.objects.filter(team=team).exists()
    [recording] = SessionRecordingEvent.objects.filter(team=team)
    assert (recording.session_id, recording.distinct_id, recording.snapshot_data) == ("abcf-efg", "some-id", {"timestamp": 123})
    assert recording.created_at == recording.timestamp


def test_identify_set(team: Team, ingester: Ingester) -> None:
    """identify set: $set lands on the event and the person, who becomes identified; a later $set overwrites."""
    person = create_person(team, ["distinct_id"])
    first_set = {"a_prop": "test-1", "c_prop": "test-1"}
    stored(process_event(ingester, "distinct_id", "", {"event": "$identify", "properties": {"token": "x", "$set": first_set}}, team.id))
    [event] = Event.objects.filter(team=team)
    assert event.properties["$set"] == first_set
    person.refresh_from_db()
    assert (person.properties, person.is_identified, distinct_ids_of(person)) == (first_set, True, ["distinct_id"])
    stored(process_event(ingester, "distinct_id", "", {"event": "$identify", "properties": {"$set": {"a_prop": "test-2", "b_prop": "test-2b"}}}, team.id))
    assert Event.objects.filter(team=team).count() == 2
    person.refresh_from_db()
    assert person.properties == {"a_prop": "test-2", "b_prop": "test-2b", "c_prop": "test-1"}


def test_distinct_with_anonymous_id(team: Team, ingester: Ingester) -> None:
    """distinct with anonymous_id: $identify with $anon_distinct_id joins the ids; sending it again is harmless."""
    create_person(team, ["anonymous_id"])
    data = {"event": "$identify", "properties": {"$anon_distinct_id": "anonymous_id", "$set": {"a_prop": "test"}}}
    stored(process_event(ingester, "new_distinct_id", "", data, team.id))
    assert Event.objects.get(team=team).properties["$set"] == {"a_prop": "test"}
    [person] = Person.objects.filter(team=team)
    assert (distinct_ids_of(person), person.properties) == (["anonymous_id", "new_distinct_id"], {"a_prop": "test"})
    stored(process_event(ingester, "new_distinct_id", "", data, team.id))
    assert Person.objects.filter(team=team).count() == 1


def test_distinct_with_anonymous_id_which_was_already_created(team: Team, ingester: Ingester) -> None:
    """An $identify joining two existing persons merges them, keeping the identified person's email."""
    create_person(team, ["anonymous_id"])
    create_person(team, ["new_distinct_id"], properties={"email": "someone@gmail.com"})
    data = {"event": "$identify", "properties": {"$anon_distinct_id": "anonymous_id"}}
    stored(process_event(ingester, "new_distinct_id", "", data, team.id))
    [person] = Person.objects.filter(team=team)
    assert distinct_ids_of(person) == ["anonymous_id", "new_distinct_id"]
    assert person.properties["email"] == "someone@gmail.com"


def test_set_is_identified(team: Team, ingester: Ingester) -> None:
    """set is_identified: $identify with empty properties marks the person identified."""
    person = create_person(team, ["777"], is_identified=False)
    stored(process_event(ingester, "777", "", {"event": "$identify", "properties": {}}, team.id))
    person.refresh_from_db()
    assert person.is_identified is True


def test_team_event_properties(team: Team, ingester: Ingester) -> None:
    """team event_properties: one event definition; price numerical, name and $ip not."""
    stored(process_event(ingester, "xxx", "127.0.0.1", {"event": "purchase", "properties": {"price": 299.99, "name": "AirPods Pro"}}, team.id))
    assert list(EventDefinition.objects.filter(team=team).values_list("name", flat=True)) == ["purchase"]
    assert list(PropertyDefinition.objects.filter(team=team).order_by("id").values_list("name", "is_numerical")) == [
        ("price", True),
        ("name", False),
        ("$ip", False),
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ({"event name": "as object"}, '{"event name":"as object"}'),
        (["event name", "a list"], '["event name","a list"]'),
        ("E" * 300, "E" * 200),
    ],
    ids=["event name object json", "event name array json", "long event name substr"],
)
def test_event_name(team: Team, ingester: Ingester, name: Any, expected: str) -> None:
    """A non-text event name is stored as compact JSON; names keep their first 200 characters."""
    stored(process_event(ingester, "xxx", "", {"event": name, "properties": {}}, team.id))
    assert Event.objects.get(team=team).event == expected


@pytest.mark.parametrize(
    ("bad_uuid", "message"),
    [("this is not an uuid", 'Not a valid UUID: "this is not an uuid"'), (None, 'Not a valid UUID: "null"')],
)
def test_throws_with_bad_uuid(team: Team, ingester: Ingester, bad_uuid: Any, message: str) -> None:
    """throws with bad uuid: the event is returned invalid with the original's message."""
    result = process_event(ingester, "xxx", "", {"event": "E", "properties": {}}, team.id, event_uuid=bad_uuid)
    [(_, error)] = result.invalid
    assert (error.reason, str(error)) == ("invalid_uuid", message)
    assert not Event.objects.exists()


def test_any_event_can_do_set_on_props_user_exists(team: Team, ingester: Ingester) -> None:
    """Any event's $set updates an existing person and stays on the event."""
    person = create_person(team, ["distinct_id"])
    to_set = {"a_prop": "test-1", "c_prop": "test-1"}
    stored(process_event(ingester, "distinct_id", "", {"event": "some_event", "properties": {"$set": to_set}}, team.id))
    assert Event.objects.get(team=team).properties["$set"] == to_set
    person.refresh_from_db()
    assert (person.properties, distinct_ids_of(person)) == (to_set, ["distinct_id"])


def test_any_event_can_do_set_on_props_new_user(team: Team, ingester: Ingester) -> None:
    """Any event's $set on a new distinct id creates the person with those properties."""
    to_set = {"a_prop": "test-1", "c_prop": "test-1"}
    stored(process_event(ingester, "distinct_id", "", {"event": "some_event", "properties": {"$set": to_set}}, team.id))
    [person] = Person.objects.filter(team=team)
    assert (person.properties, distinct_ids_of(person)) == (to_set, ["distinct_id"])


def test_any_event_can_do_set_once_on_props(team: Team, ingester: Ingester) -> None:
    """$set_once only fills keys the person does not have."""
    person = create_person(team, ["distinct_id"])
    first = {"a_prop": "test-1", "c_prop": "test-1"}
    stored(process_event(ingester, "distinct_id", "", {"event": "some_event", "properties": {"$set_once": first}}, team.id))
    stored(process_event(ingester, "distinct_id", "", {"event": "some_other_event", "properties": {"$set_once": {"a_prop": "test-2", "b_prop": "test-2b"}}}, team.id))
    assert Event.objects.filter(team=team).order_by("id").first().properties["$set_once"] == first
    person.refresh_from_db()
    assert person.properties == {"a_prop": "test-1", "b_prop": "test-2b", "c_prop": "test-1"}


def test_increment_does_not_increment_non_numerical_props(team: Team, ingester: Ingester) -> None:
    """$increment leaves a non-numeric value alone."""
    person = create_person(team, ["distinct_id"])
    stored(process_event(ingester, "distinct_id", "", {"event": "some_event", "properties": {"$set": {"hello": "world"}}}, team.id))
    stored(process_event(ingester, "distinct_id", "", {"event": "some_event", "properties": {"$increment": {"hello": 10000}}}, team.id))
    person.refresh_from_db()
    assert person.properties == {"hello": "world"}


def test_distinct_id_wrong_type_number(team: Team, ingester: Ingester) -> None:
    """A numeric distinct id is stored as its text."""
    stored(process_event(ingester, 12345, "", {"event": "E", "properties": {}}, team.id))
    assert Event.objects.get(team=team).distinct_id == "12345"


def test_element_group(team: Team) -> None:
    """element group: the same elements make one group per team with the same hash in every team."""
    sink = PostgresSink()
    elements = [Element(tag_name="button", text="Sign up!"), Element(tag_name="div")]
    first_hash = store_element_group(sink, team.id, elements)
    assert sorted(ElementRow.objects.values_list("tag_name", flat=True)) == ["button", "div"]
    # The raw "event" key is not an element field: the same elements again.
    again = [Element(tag_name="button", text="Sign up!"), Element(**{"tag_name": "div"})]
    assert store_element_group(PostgresSink(), team.id, again) == first_hash
    assert ElementRow.objects.count() == 2
    other_team = create_team()
    assert store_element_group(sink, other_team.id, elements) == first_hash
    assert ElementRow.objects.count() == 4
