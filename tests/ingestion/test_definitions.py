"""Event and property definitions (spec: ingestion.md §6.2; acceptance.md "Team manager")."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from plugin_server.ingestion.definitions import DefinitionsManager, NewDefinitions
from plugin_server.models import EventDefinition, PropertyDefinition
from tests.factories import create_team

pytestmark = pytest.mark.django_db


def write(manager: DefinitionsManager, team_id: int, name: str, properties: dict[str, object]) -> None:
    manager.write(manager.new_definitions([(team_id, name, properties)]))


def test_updates_event_properties() -> None:
    """Known definitions stay as they are; the new event and properties are added, numbers marked numerical."""
    team = create_team()
    EventDefinition.objects.create(team=team, name="$pageview", volume_30_day=3, query_usage_30_day=2)
    PropertyDefinition.objects.create(team=team, name="property_name", is_numerical=False)
    PropertyDefinition.objects.create(team=team, name="numeric_prop", is_numerical=True)
    write(DefinitionsManager(), team.id, "new-event", {"property_name": "efg", "number": 4, "numeric_prop": 5})
    assert sorted(EventDefinition.objects.filter(team=team).values_list("name", "volume_30_day", "query_usage_30_day")) == [
        ("$pageview", 3, 2),
        ("new-event", None, None),
    ]
    assert sorted(PropertyDefinition.objects.filter(team=team).values_list("name", "is_numerical")) == [
        ("number", True),
        ("numeric_prop", True),
        ("property_name", False),
    ]


def test_does_not_update_anything_if_nothing_changes() -> None:
    """With the team's definitions loaded, an event with nothing new costs no query at all."""
    team = create_team()
    manager = DefinitionsManager()
    write(manager, team.id, "$pageview", {"a": 1})
    with CaptureQueriesContext(connection) as queries:
        write(manager, team.id, "$pageview", {})
        write(manager, team.id, "$pageview", {"a": 2})
    assert len(queries) == 0


def test_numerical_is_decided_by_the_first_value() -> None:
    """Booleans and numeric texts are not numerical; a later number does not change a definition."""
    team = create_team()
    manager = DefinitionsManager()
    write(manager, team.id, "e", {"flag": True, "text": "12", "later": "x"})
    write(DefinitionsManager(), team.id, "e", {"later": 5})
    assert dict(PropertyDefinition.objects.filter(team=team).values_list("name", "is_numerical")) == {
        "flag": False,
        "text": False,
        "later": False,
    }


def test_a_batch_of_many_teams_costs_one_statement_per_table() -> None:
    """New definitions of several teams and events: two loads and two inserts, each name once."""
    teams = [create_team() for _ in range(3)]
    manager = DefinitionsManager()
    events = [(team.id, f"event-{number % 2}", {"p": number, f"q{number % 3}": "x"}) for number in range(30) for team in teams]
    with CaptureQueriesContext(connection) as queries:
        new = manager.new_definitions(events)
        manager.write(new)
    assert len([query for query in queries.captured_queries if "INSERT" in query["sql"]]) == 2
    assert len([query for query in queries.captured_queries if query["sql"].startswith("SELECT")]) == 2
    assert (len(new.events), len(new.properties)) == (6, 12)
    assert EventDefinition.objects.filter(team__in=teams).count() == 6
    assert PropertyDefinition.objects.filter(team__in=teams).count() == 12


def test_definitions_another_server_wrote_are_not_duplicated() -> None:
    """Names inserted meanwhile by another server are skipped by ON CONFLICT, not an error."""
    team = create_team()
    manager = DefinitionsManager()
    new = manager.new_definitions([(team.id, "e", {"p": 1})])
    EventDefinition.objects.create(team=team, name="e")
    PropertyDefinition.objects.create(team=team, name="p")
    manager.write(new)
    assert EventDefinition.objects.filter(team=team).count() == 1
    assert PropertyDefinition.objects.filter(team=team).count() == 1


def test_ids_follow_the_order_names_were_met() -> None:
    """Ordering definitions by id lists them in the order the event had them."""
    team = create_team()
    write(DefinitionsManager(), team.id, "e", {"zeta": 1, "alpha": 2, "mid": 3})
    assert list(PropertyDefinition.objects.filter(team=team).order_by("id").values_list("name", flat=True)) == ["zeta", "alpha", "mid"]


def test_nothing_new_is_falsy() -> None:
    """An empty NewDefinitions means nothing to write."""
    assert not NewDefinitions()
    assert NewDefinitions(events=[(1, "e")])


def test_memory_per_team_is_bounded_and_definitions_still_complete() -> None:
    """Past max_names a team's new names are not remembered, yet every definition is written once."""
    team = create_team()
    manager = DefinitionsManager(max_names=3)
    write(manager, team.id, "e", {f"k{number}": number for number in range(5)})
    write(manager, team.id, "e", {f"k{number}": number for number in range(7)})
    assert PropertyDefinition.objects.filter(team=team).count() == 7
    assert len(manager.new_definitions([(team.id, "e", {f"k{number}": 1 for number in range(7)})]).properties) == 4


def test_loading_a_team_remembers_at_most_max_names() -> None:
    """A team with more stored definitions than max_names is loaded partially; nothing is written twice."""
    team = create_team()
    write(DefinitionsManager(), team.id, "e", {f"k{number}": number for number in range(6)})
    manager = DefinitionsManager(max_names=2)
    new = manager.new_definitions([(team.id, "e", {f"k{number}": 1 for number in range(6)})])
    assert len(new.properties) == 4
    manager.write(new)
    assert PropertyDefinition.objects.filter(team=team).count() == 6
