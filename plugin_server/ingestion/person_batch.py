"""One batch's person work: identify, alias, merge, new persons and property updates.

A :class:`PersonBatch` loads (and locks) the persons of every distinct id the
batch needs in one query, replays the events in order against those rows in
memory, and writes the result with one statement per table: new persons,
new distinct ids, changed persons. Merges are rare and write at once
(after flushing what is pending, so that both persons exist in the table).

The rules are the original's with the later fixes this port takes; see docs/persons.md.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db.backends.utils import CursorWrapper

from plugin_server.ingestion import person_store
from plugin_server.ingestion.distinct_ids import DistinctIdCache, DistinctIdKey
from plugin_server.ingestion.jsstring import js_string
from plugin_server.ingestion.person_properties import (
    as_dict,
    jsonb_text,
    merged_properties,
    updated_properties,
    valid_increments,
)
from plugin_server.ingestion.person_store import PersonRecord
from plugin_server.ingestion.uuidt import uuidt

if TYPE_CHECKING:
    from plugin_server.ingestion.persons import PersonUpdate

logger = logging.getLogger(__name__)

# posthog_persondistinctid.distinct_id is varchar(400); Postgres text cannot hold NUL.
MAX_DISTINCT_ID_LENGTH = 400



@dataclass(frozen=True, slots=True)
class DistinctIdChange:
    """A ``posthog_persondistinctid`` row added or moved, as ``clickhouse_person_unique_id`` carries it."""

    id: int
    team_id: int
    distinct_id: str
    person_uuid: str


@dataclass(slots=True)
class PersonChanges:
    """What one batch wrote, in order, for a sink that mirrors persons (the Kafka pipeline).

    ``created`` persons were inserted (their final state at insert),
    ``updated`` persons were written again, ``distinct_ids`` were added or
    moved, ``deleted`` persons were merged away."""

    created: list[PersonRecord] = field(default_factory=list)
    updated: list[PersonRecord] = field(default_factory=list)
    distinct_ids: list[DistinctIdChange] = field(default_factory=list)
    deleted: list[PersonRecord] = field(default_factory=list)


class RaceLost(Exception):
    """Another transaction created a distinct id this batch meant to create; replay the batch."""


def is_storable_distinct_id(distinct_id: str) -> bool:
    return len(distinct_id) <= MAX_DISTINCT_ID_LENGTH and "\x00" not in distinct_id


def _has_property_update(properties: dict[str, Any]) -> bool:
    return bool(properties.get("$set") or properties.get("$set_once") or properties.get("$increment"))


def _differ(new: dict[str, Any], stored: dict[str, Any] | None) -> bool:
    """True if writing ``new`` would change the row: Python equality first, JSON text when they look equal
    (``True == 1`` and ``1.0 == 1`` in Python, not in JSON)."""
    if new is stored:
        return False
    if stored is None or new != stored:
        return True
    return jsonb_text(new) != jsonb_text(stored)


class PersonBatch:
    """The person side of one batch inside one transaction (or savepoint); used once."""

    def __init__(self, cursor: CursorWrapper, cache: DistinctIdCache, clock: Callable[[], datetime]) -> None:
        self._cursor = cursor
        self._cache = cache
        self._clock = clock
        self._persons: dict[DistinctIdKey, PersonRecord] = {}
        # Keys looked up in the database this batch: only these may be "new".
        self._queried: set[DistinctIdKey] = set()
        # Keys looked up only to know whether they own a person (not locked, never changed).
        self._existing: set[DistinctIdKey] = set()
        self._new_persons: list[PersonRecord] = []
        self._new_distinct_ids: list[tuple[PersonRecord, str]] = []
        self._to_update: list[PersonRecord] = []
        self._person_uuid_taken = False
        # Persons inserted and merged away; counted by the manager once the batch succeeded.
        self.created = 0
        self.merged = 0
        self.invalid: Counter[int] = Counter()  # unstorable distinct ids per team
        self.changes = PersonChanges()

    def known_keys(self) -> list[DistinctIdKey]:
        """Every key that owns a person once the batch commits (for the distinct-id cache)."""
        return [*self._persons, *self._existing]

    def run(self, updates: Sequence[PersonUpdate]) -> None:
        """Apply every update in order, then write what is left."""
        to_lock, to_probe = self._keys_to_load(updates)
        self._queried = to_lock | to_probe
        self._persons = person_store.load_persons(self._cursor, to_lock)
        self._existing = person_store.existing_distinct_ids(self._cursor, to_probe)
        for update in updates:
            self._apply(update)
        self._flush()
        changed = []
        for person in self._to_update:
            if person.deleted or person.id is None:
                continue
            if person.changed or _differ(person.properties, person.stored_properties):
                changed.append(person)
        person_store.update_persons(self._cursor, changed)
        self.changes.updated.extend(changed)

    def _keys_to_load(self, updates: Sequence[PersonUpdate]) -> tuple[set[DistinctIdKey], set[DistinctIdKey]]:
        """The keys whose persons this batch may change (to load and lock), and those it only
        needs to know exist (plain events of ids the cache does not hold)."""
        keys: set[DistinctIdKey] = set()
        probe: set[DistinctIdKey] = set()
        for update in updates:
            team_id = update.team_id
            if update.event == "$create_alias":
                alias = update.properties.get("alias")
                if alias is not None:
                    keys.add((team_id, js_string(alias)))
                keys.add((team_id, update.distinct_id))
            elif update.event == "$identify":
                anon = update.properties.get("$anon_distinct_id")
                if anon:
                    keys.add((team_id, js_string(anon)))
                keys.add((team_id, update.distinct_id))
            elif update.event != "$snapshot":
                if _has_property_update(update.properties):
                    keys.add((team_id, update.distinct_id))
                elif not self._cache.contains(team_id, update.distinct_id):
                    # A cached key owns a person already: no lookup at all.
                    probe.add((team_id, update.distinct_id))
        probe -= keys
        unstorable = [key for key in keys | probe if not is_storable_distinct_id(key[1])]
        for team_id, distinct_id in unstorable:
            self._count_invalid(team_id, distinct_id)
        return keys.difference(unstorable), probe.difference(unstorable)

    def _apply(self, update: PersonUpdate) -> None:
        self._person_uuid_taken = False
        team_id, distinct_id = update.team_id, update.distinct_id
        if update.event == "$create_alias":
            self._alias(update, update.properties.get("alias"), distinct_id)
        elif update.event == "$identify":
            anon = update.properties.get("$anon_distinct_id")
            if anon:
                self._alias(update, anon, distinct_id)
            self._set_identified(update)
        if update.event == "$snapshot":
            return
        key = (team_id, distinct_id)
        if key in self._queried and key not in self._persons and key not in self._existing:
            self._create(update, [distinct_id], update.new_person_created_at, is_identified=False)
        if _has_property_update(update.properties):
            self._update_properties(update)

    def _update_properties(self, update: PersonUpdate) -> None:
        person = self._persons.get((update.team_id, update.distinct_id))
        if person is None:  # the distinct id could not be stored (too long)
            return
        properties = update.properties
        new = updated_properties(
            person.properties,
            as_dict(properties.get("$set")),
            as_dict(properties.get("$set_once")),
            valid_increments(properties.get("$increment")),
        )
        self._touch(person)
        person.properties = new

    def _set_identified(self, update: PersonUpdate) -> None:
        person = self._persons.get((update.team_id, update.distinct_id))
        if person is None:
            self._create(update, [update.distinct_id], self._clock(), is_identified=True)
        elif not person.is_identified:
            self._touch(person)
            person.is_identified = True
            person.changed = True

    def _alias(self, update: PersonUpdate, previous_value: Any, current: str) -> None:
        """Make ``previous`` and ``current`` one person."""
        if previous_value is None:
            return  # the original fails on a null distinct id and creates nothing
        previous = js_string(previous_value)
        if previous == current:
            return  # aliasing an id to itself changes nothing
        team_id = update.team_id
        old = self._persons.get((team_id, previous))
        new = self._persons.get((team_id, current))
        if old is not None and new is None:
            self._add_distinct_id(old, current)
        elif old is None and new is not None:
            self._add_distinct_id(new, previous)
        elif old is None and new is None:
            self._create(update, [current, previous], self._clock(), is_identified=False)
        elif old is not new:
            assert old is not None and new is not None
            self._merge(into=new, other=old)

    def _create(
        self, update: PersonUpdate, distinct_ids: list[str], created_at: datetime, is_identified: bool
    ) -> None:
        storable = [distinct_id for distinct_id in distinct_ids if self._check_storable(update, distinct_id)]
        if not storable:
            return
        # The event's own person uuid for its first new person.
        uuid = update.person_uuid if update.person_uuid and not self._person_uuid_taken else uuidt.text()
        self._person_uuid_taken = True
        person = PersonRecord(None, uuid, update.team_id, created_at, {}, is_identified)
        self._new_persons.append(person)
        for distinct_id in storable:
            self._new_distinct_ids.append((person, distinct_id))
            self._persons[(update.team_id, distinct_id)] = person

    def _add_distinct_id(self, person: PersonRecord, distinct_id: str) -> None:
        if is_storable_distinct_id(distinct_id):
            self._new_distinct_ids.append((person, distinct_id))
            self._persons[(person.team_id, distinct_id)] = person
        else:
            self._count_invalid(person.team_id, distinct_id)

    def _check_storable(self, update: PersonUpdate, distinct_id: str) -> bool:
        if is_storable_distinct_id(distinct_id):
            return True
        self._count_invalid(update.team_id, distinct_id)
        return False

    def _count_invalid(self, team_id: int, distinct_id: str) -> None:
        logger.warning(
            "distinct id not stored: longer than %d characters or holds NUL",
            MAX_DISTINCT_ID_LENGTH,
            extra={"team_id": team_id, "distinct_id_length": len(distinct_id)},
        )
        self.invalid[team_id] += 1

    def _merge(self, into: PersonRecord, other: PersonRecord) -> None:
        """Merge ``other`` into ``into``: the survivor's properties win, the earliest created_at stays."""
        self._touch(into)
        into.properties = merged_properties(into.properties, other.properties)
        into.created_at = min(into.created_at, other.created_at)
        # Later versions OR the flag (the original kept the survivor's); a merged
        # identified person should not turn anonymous.
        into.is_identified = into.is_identified or other.is_identified
        into.changed = True
        self._flush()  # both persons and all their distinct ids must be rows now
        assert into.id is not None and other.id is not None
        moved = person_store.merge_rows(self._cursor, into.team_id, into.id, other.id)
        self.changes.distinct_ids.extend(
            DistinctIdChange(row_id, into.team_id, distinct_id, into.uuid) for row_id, distinct_id in moved
        )
        self.changes.deleted.append(other)
        other.deleted = True
        for key, person in self._persons.items():
            if person is other:
                self._persons[key] = into
        self.merged += 1
        logger.info(
            "merged person into another", extra={"team_id": into.team_id, "person_id": into.id, "merged_id": other.id}
        )

    def _touch(self, person: PersonRecord) -> None:
        # Remember what the row holds before the first change, to skip no-op writes.
        if person.touched:
            return
        person.touched = True
        if person.id is not None:
            if person.stored_properties is None:
                person.stored_properties = person.properties
            self._to_update.append(person)

    def _flush(self) -> None:
        """Insert the pending persons and distinct ids (one statement each)."""
        if self._new_persons:
            person_store.insert_persons(self._cursor, self._new_persons)
            self.created += len(self._new_persons)
            self.changes.created.extend(self._new_persons)
            self._new_persons = []
        if self._new_distinct_ids:
            rows: list[tuple[int, str, int]] = []
            for person, distinct_id in self._new_distinct_ids:
                assert person.id is not None  # every pending person was inserted just above
                rows.append((person.team_id, distinct_id, person.id))
            inserted = person_store.insert_distinct_ids(self._cursor, rows)
            if len(inserted) < len(rows):
                raise RaceLost(sorted({(team_id, did) for team_id, did, _ in rows} - inserted.keys())[:5])
            self.changes.distinct_ids.extend(
                DistinctIdChange(inserted[(person.team_id, distinct_id)], person.team_id, distinct_id, person.uuid)
                for person, distinct_id in self._new_distinct_ids
            )
            self._new_distinct_ids = []
