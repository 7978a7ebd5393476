"""Event and property definitions, and the team's first-event flag.

Each process keeps, per team, the event names and property names it knows
exist. A batch asks only about names it has not seen: the definitions of
every team it has not loaded yet cost one query per table, the new names one
multi-row ``INSERT ... ON CONFLICT DO NOTHING`` per table. When nothing is
new, no query is made.

The inserts run in their own short transaction, before the batch's main one,
with rows sorted by (team, name): two servers inserting overlapping names
then wait for each other instead of deadlocking, and no definition lock is
held while the batch writes persons and events. A definition written for a
batch that later fails is still a true fact (the event will be stored on
retry), so nothing needs undoing. The ids are UUIDTs drawn in the order the
names were met, so ordering by id lists definitions as the events had them.

The columns written follow the host's tables: the ones every PostHog has
(id, team, name, is_numerical), plus those its models declare among
:data:`EVENT_DEFINITION_EXTRAS` / :data:`PROPERTY_DEFINITION_EXTRAS`
(today's PostHog requires ``type`` on property definitions and has dropped
the 30-day usage columns).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db import connection, transaction

from plugin_server.ingestion.uuidt import uuidt
from plugin_server.metrics import INGESTION_DEFINITION_NAME_TOO_LONG, get_metrics
from plugin_server.models import EventDefinition, PropertyDefinition

logger = logging.getLogger(__name__)

NAME_MAX_LENGTH = 400  # posthog_eventdefinition.name and posthog_propertydefinition.name

# Column -> SQL value, written where the host's model has the column.
EVENT_DEFINITION_EXTRAS = {"volume_30_day": "NULL", "query_usage_30_day": "NULL", "created_at": "now()", "last_seen_at": "now()"}
# type 1: an event property (PostHog's PropertyDefinition.Type.EVENT).
PROPERTY_DEFINITION_EXTRAS = {"volume_30_day": "NULL", "query_usage_30_day": "NULL", "type": "1"}


def _extra_columns(model: Any, extras: Mapping[str, str]) -> tuple[str, str]:
    """(", col, ...", ", value, ...") for the extras ``model`` has."""
    present = {field.column for field in model._meta.concrete_fields}
    wanted = [(column, value) for column, value in extras.items() if column in present]
    return "".join(f", {column}" for column, _ in wanted), "".join(f", {value}" for _, value in wanted)


@dataclass(slots=True)
class _KnownNames:
    events: set[str] = field(default_factory=set)
    properties: set[str] = field(default_factory=set)


@dataclass(slots=True)
class NewDefinitions:
    """What one batch adds: (team, name) of events; (team, name, is_numerical) of properties."""

    events: list[tuple[int, str]] = field(default_factory=list)
    properties: list[tuple[int, str, bool]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.properties)


def is_numerical(value: object) -> bool:
    """A JSON number (booleans and numeric texts are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class DefinitionsManager:
    """Writes the definitions a batch introduces.

    Memory is bounded: at most ``max_teams`` teams (least recently used
    dropped) and ``max_names`` remembered names per team and kind. A team
    past that (keys made of ids, say) still gets every definition, at the
    cost of its unremembered names being offered again, with ``ON CONFLICT
    DO NOTHING``, in the one insert of each batch they appear in."""

    def __init__(self, max_teams: int = 1_000, max_names: int = 20_000) -> None:
        self._max_teams = max_teams
        self._max_names = max_names
        self._known: OrderedDict[int, _KnownNames] = OrderedDict()

    def new_definitions(self, events: Iterable[tuple[int, str, Mapping[str, Any]]]) -> NewDefinitions:
        """The definitions not yet known among (team id, event name, properties) triples."""
        events = list(events)
        self._load({team_id for team_id, _, _ in events})
        new = NewDefinitions()
        seen_events: set[tuple[int, str]] = set()
        seen_properties: set[tuple[int, str]] = set()
        for team_id, name, properties in events:
            known = self._known[team_id]
            if name not in known.events and (team_id, name) not in seen_events:
                seen_events.add((team_id, name))
                new.events.append((team_id, name))
            for key, value in properties.items():
                if key in known.properties or (team_id, key) in seen_properties:
                    continue
                seen_properties.add((team_id, key))
                if len(key) > NAME_MAX_LENGTH:
                    # Cannot be stored; skipping it keeps the rest of the batch's definitions.
                    get_metrics().incr(INGESTION_DEFINITION_NAME_TOO_LONG, tags={"team_id": team_id})
                    continue
                new.properties.append((team_id, key, is_numerical(value)))
        return new

    def write(self, new: NewDefinitions) -> None:
        """Insert the new definitions (one statement per table) and remember them."""
        if not new:
            return
        event_ids = [uuidt.text() for _ in new.events]
        property_ids = [uuidt.text() for _ in new.properties]
        events = sorted(zip(new.events, event_ids), key=lambda row: row[0])
        properties = sorted(zip(new.properties, property_ids), key=lambda row: row[0][:2])
        with transaction.atomic(), connection.cursor() as cursor:
            if events:
                columns, values = _extra_columns(EventDefinition, EVENT_DEFINITION_EXTRAS)
                cursor.execute(
                    f"INSERT INTO posthog_eventdefinition (id, name, team_id{columns})"
                    f" SELECT id, name, team_id{values} FROM unnest(%s::uuid[], %s::varchar[], %s::int[])"
                    " AS new (id, name, team_id) ON CONFLICT DO NOTHING",
                    [[row_id for _, row_id in events], [name for (_, name), _ in events], [team for (team, _), _ in events]],
                )
            if properties:
                columns, values = _extra_columns(PropertyDefinition, PROPERTY_DEFINITION_EXTRAS)
                cursor.execute(
                    f"INSERT INTO posthog_propertydefinition (id, name, is_numerical, team_id{columns})"
                    f" SELECT id, name, is_numerical, team_id{values}"
                    " FROM unnest(%s::uuid[], %s::varchar[], %s::bool[], %s::int[]) AS new (id, name, is_numerical, team_id)"
                    " ON CONFLICT DO NOTHING",
                    [
                        [row_id for _, row_id in properties],
                        [name for (_, name, _), _ in properties],
                        [numerical for (_, _, numerical), _ in properties],
                        [team for (team, _, _), _ in properties],
                    ],
                )
        # Only now: a rolled-back insert must not be remembered as done.
        for team_id, name in new.events:
            self._remember(team_id, name, events=True)
        for team_id, name, _ in new.properties:
            self._remember(team_id, name, events=False)

    def _remember(self, team_id: int, name: str, events: bool) -> None:
        known = self._known.get(team_id)
        if known is None:
            return
        names = known.events if events else known.properties
        if len(names) < self._max_names:
            names.add(name)

    def _load(self, team_ids: set[int]) -> None:
        for team_id in team_ids & self._known.keys():
            self._known.move_to_end(team_id)
        missing = sorted(team_ids - self._known.keys())
        if not missing:
            return
        for team_id in missing:
            self._known[team_id] = _KnownNames()
        with connection.cursor() as cursor:
            cursor.execute("SELECT team_id, name FROM posthog_eventdefinition WHERE team_id = ANY(%s)", [missing])
            for team_id, name in cursor.fetchall():
                self._remember(team_id, name, events=True)
            cursor.execute("SELECT team_id, name FROM posthog_propertydefinition WHERE team_id = ANY(%s)", [missing])
            for team_id, name in cursor.fetchall():
                self._remember(team_id, name, events=False)
        while len(self._known) > max(self._max_teams, len(team_ids)):
            self._known.popitem(last=False)
        logger.debug("loaded definitions of %d teams", len(missing))
