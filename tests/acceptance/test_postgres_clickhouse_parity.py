"""Postgres ↔ ClickHouse parity: the same events through both pipelines give the same persons, distinct ids and events.

The same captured events go once through the Postgres pipeline (team P:
Ingester + PostgresSink) and once through the Kafka pipeline (team K:
Ingester + KafkaSink, then the ClickHouse writer). Then

- ClickHouse mirrors Postgres exactly for team K: every person (properties,
  identified) and every distinct id, merged-away persons gone;
- team K's persons equal team P's (same person logic; only uuids differ);
- team K's events in ClickHouse equal team P's rows in ``posthog_event``:
  name, distinct id, properties, timestamp, elements (the ClickHouse
  elements chain read back hashes like Postgres's element group).

Also the acceptance lines "Postgres ↔ ClickHouse parity" (create, update,
delete a person) through ingestion: an identify creates, ``$set`` updates,
an alias of two persons deletes one in both stores.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from plugin_server.ingestion.elements import Element, elements_chain, elements_from_chain, elements_hash
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.models import Event, Person, PersonDistinctId, Team
from plugin_server.sinks.kafka import KafkaSink
from plugin_server.sinks.postgres import PostgresSink
from tests.factories import create_team
from tests.kafka_pipeline import KafkaPipeline, kafka_pipeline  # noqa: F401 -- the fixture
from tests.manage_process import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.kafka, pytest.mark.clickhouse]

NOW = datetime(2021, 5, 17, 10, 0, 0, tzinfo=timezone.utc)
ELEMENTS = [
    {"tag_name": "a", "nth_child": 1, "nth_of_type": 2, "attr__class": "btn btn-sm"},
    {"tag_name": "div", "nth_child": 1, "nth_of_type": 2, "$el_text": "💻"},
]


def captured(team: Team) -> list[dict[str, Any]]:
    """The same story for any team: identify, set, set once, increment, utm, autocapture, alias of two persons."""
    script: list[tuple[str, str, dict[str, Any]]] = [
        ("anon-1", "$pageview", {"utm_source": "newsletter", "$browser": "Chrome", "$current_url": "https://example.com/"}),
        ("2", "$autocapture", {"$browser": "Chrome", "utm_medium": "twitter", "$elements": ELEMENTS}),
        ("alice", "$identify", {"$anon_distinct_id": "anon-1", "$set": {"email": "a@example.com", "plan": "free"}}),
        ("bob", "signed up", {"$set_once": {"first_seen": "today"}, "$set": {"plan": "pro"}}),
        ("bob", "visit", {"$increment": {"visits": 2}}),
        ("carol", "nested", {"deep": {"list": [1, "two", None, {"x": 1.5}]}, "ünïcode": "ü ' \" \\"}),
        ("alice", "$set", {"$set": {"plan": "enterprise"}}),
        ("bob", "$create_alias", {"alias": "alice"}),  # two persons: alice's is merged into bob's
        ("alice", "after merge", {"$set_once": {"first_seen": "never"}}),
    ]
    events = []
    for index, (distinct_id, name, properties) in enumerate(script):
        event_uuid = str(uuidt())
        when = (NOW + timedelta(seconds=index)).isoformat()
        events.append(
            {"event": name, "distinct_id": distinct_id, "team_id": team.id, "uuid": event_uuid, "now": when, "sent_at": None,
             "timestamp": when, "ip": "127.0.0.1", "site_url": "http://localhost", "properties": {**properties, "test_index": index}}
        )
    return events


def postgres_persons(team: Team) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    persons = {str(p.uuid): {"properties": p.properties, "is_identified": p.is_identified} for p in Person.objects.filter(team_id=team.id)}
    distinct_ids = {row.distinct_id: str(row.person.uuid) for row in PersonDistinctId.objects.filter(team_id=team.id).select_related("person")}
    return persons, distinct_ids


def by_distinct_id(persons: dict[str, dict[str, Any]], distinct_ids: dict[str, str]) -> dict[frozenset[str], dict[str, Any]]:
    """Persons keyed by the set of their distinct ids (uuids differ between teams)."""
    groups: dict[str, set[str]] = {}
    for distinct_id, person in distinct_ids.items():
        groups.setdefault(person, set()).add(distinct_id)
    return {frozenset(groups.get(uuid, set())): person for uuid, person in persons.items()}


def test_the_same_events_through_both_pipelines_give_the_same_persons_distinct_ids_and_events(
    kafka_pipeline: KafkaPipeline,
) -> None:
    postgres_team = create_team(ingested_event=True)
    kafka_team = create_team(ingested_event=True)
    for team, sink in ((postgres_team, PostgresSink()), (kafka_team, KafkaSink())):
        ingester = Ingester(sink=sink, persons=PersonManager(lru_size=100), clock=lambda: NOW)
        for event in captured(team):  # one at a time, as the order of the story matters
            result = ingester.ingest([event])
            assert result.invalid == [] and len(result.stored) == 1

    expected_events = len(captured(kafka_team))
    wait_for(lambda: len(kafka_pipeline.events(kafka_team.id)) == expected_events, 60, "the events in ClickHouse")

    # ClickHouse mirrors Postgres for the Kafka team (merged persons deleted there too).
    persons, distinct_ids = postgres_persons(kafka_team)
    wait_for(lambda: kafka_pipeline.persons(kafka_team.id) == persons, 30, "ClickHouse persons equal to Postgres's")
    wait_for(lambda: kafka_pipeline.distinct_ids(kafka_team.id) == distinct_ids, 30, "ClickHouse distinct ids equal to Postgres's")
    assert len(persons) == 3  # alice+anon-1+bob merged into one; "2"; carol

    # Both pipelines made the same persons.
    assert by_distinct_id(*postgres_persons(postgres_team)) == by_distinct_id(persons, distinct_ids)
    merged = by_distinct_id(persons, distinct_ids)[frozenset({"anon-1", "alice", "bob"})]
    assert merged["properties"]["plan"] == "pro" and merged["properties"]["email"] == "a@example.com"

    # The same events: ClickHouse's rows for K, posthog_event's for P.
    clickhouse_events = {event["properties"]["test_index"]: event for event in kafka_pipeline.events(kafka_team.id)}
    postgres_events = {row.properties["test_index"]: row for row in Event.objects.filter(team_id=postgres_team.id)}
    assert set(clickhouse_events) == set(postgres_events) == set(range(expected_events))
    for index, row in postgres_events.items():
        event = clickhouse_events[index]
        assert (event["event"], event["distinct_id"]) == (row.event, row.distinct_id)
        assert event["properties"] == row.properties
        # ClickHouse 18.16 keeps whole seconds (DateTime); newer ones milliseconds.
        assert event["timestamp"].replace(tzinfo=timezone.utc).replace(microsecond=0) == row.timestamp.replace(microsecond=0)
        stored_elements = [Element(**element) for element in row.elements or []]
        assert event["elements_chain"] == elements_chain(stored_elements)
        if stored_elements:
            assert elements_hash(elements_from_chain(event["elements_chain"])) == row.elements_hash
    autocapture = clickhouse_events[1]
    assert autocapture["elements_chain"].startswith('a.btn.btn-sm:attr__class="btn btn-sm"nth-child="1"nth-of-type="2"')
    assert json.loads(json.dumps(autocapture["properties"]))["$browser"] == "Chrome"
