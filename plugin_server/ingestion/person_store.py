"""The SQL of persons and distinct ids: one statement per table per batch.

Every function takes an open cursor and does one round trip, whatever the
number of rows: keys and rows travel as one JSON document, expanded with
``jsonb_to_recordset``. (Arrays cost more: psycopg quotes every element of
a text array in Python; one JSON text is encoded in C and escaped once.)
Postgres specifics of the person side live here only (tables ``posthog_person``, ``posthog_persondistinctid``,
``posthog_cohortpeople``).

The host's schema is followed where it differs: person ids travel as
``bigint`` (today's PostHog; an ``integer`` column takes them as well), and
where the person tables have PostHog's ``version`` column (today's), a new
row starts at 0 and every change of a row adds 1, as ClickHouse's
collapsing of person rows expects.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from django.db.backends.utils import CursorWrapper

from plugin_server.ingestion.distinct_ids import DistinctIdKey
from plugin_server.ingestion.person_properties import jsonb_text
from plugin_server.models import Person, PersonDistinctId

_PERSON_COLUMNS = "p.id, p.uuid, p.team_id, p.created_at, p.properties::text, p.is_identified, p.is_user_id"


def _keys_document(keys: Collection[DistinctIdKey]) -> str:
    # Read by jsonb_to_recordset(...) AS k(t int, d text).
    return json.dumps([{"t": team_id, "d": distinct_id} for team_id, distinct_id in keys])


@cache
def _versioned() -> tuple[bool, bool]:
    """Whether ``posthog_person`` and ``posthog_persondistinctid`` have a ``version`` column."""
    person, distinct_id = (
        any(field.attname == "version" for field in model._meta.concrete_fields) for model in (Person, PersonDistinctId)
    )
    return person, distinct_id


def _json_bool(value: bool) -> str:
    return "true" if value else "false"


@dataclass(slots=True, eq=False)
class PersonRecord:
    """A ``posthog_person`` row as the batch holds it; ``id`` is None until inserted.

    ``stored_properties`` is the dict the database holds, kept when the batch
    first changes the properties, so that an update that changes nothing
    writes nothing. Property dicts are never changed in place (every update
    builds a new one), which makes keeping a reference enough."""

    id: int | None
    uuid: str
    team_id: int
    created_at: datetime
    properties: dict[str, Any]
    is_identified: bool
    is_user_id: int | None = None
    stored_properties: dict[str, Any] | None = None
    touched: bool = False
    changed: bool = False
    deleted: bool = False


def _record(row: Sequence[Any]) -> PersonRecord:
    return PersonRecord(
        id=row[0],
        uuid=str(row[1]),
        team_id=row[2],
        created_at=row[3],
        properties=json.loads(row[4]),
        is_identified=row[5],
        is_user_id=row[6],
    )


def load_persons(cursor: CursorWrapper, keys: Collection[DistinctIdKey]) -> dict[DistinctIdKey, PersonRecord]:
    """The persons owning these distinct ids, locked until the transaction ends.

    The rows are locked in person id order, so two servers loading
    overlapping batches wait for each other instead of deadlocking. Keys of
    one person share one :class:`PersonRecord`. The person is joined by its
    primary key alone (the distinct id row is already filtered by team): a
    second join condition on ``team_id`` lets the planner pick the team index
    and scan every person of the team per key when statistics are missing."""
    if not keys:
        return {}
    cursor.execute(
        f"""
        SELECT k.t, k.d, {_PERSON_COLUMNS}
        FROM jsonb_to_recordset(%s::jsonb) AS k(t int, d text)
        JOIN posthog_persondistinctid pdi ON pdi.team_id = k.t AND pdi.distinct_id = k.d
        JOIN posthog_person p ON p.id = pdi.person_id
        ORDER BY p.id
        FOR NO KEY UPDATE OF pdi, p
        """,
        [_keys_document(keys)],
    )
    persons: dict[int, PersonRecord] = {}
    found: dict[DistinctIdKey, PersonRecord] = {}
    for row in cursor.fetchall():
        person = persons.get(row[2])
        if person is None:
            person = persons[row[2]] = _record(row[2:])
        found[(row[0], row[1])] = person
    return found


def current_rows(cursor: CursorWrapper, keys: Collection[DistinctIdKey]) -> list[tuple[int, str, PersonRecord]]:
    """``(distinct id row id, distinct id, person)`` as stored now for these keys; no lock.

    For re-mirroring persons of a re-delivered batch to a sink outside
    Postgres (the rows are the latest state, so mirroring them again is
    always right)."""
    if not keys:
        return []
    cursor.execute(
        f"""
        SELECT pdi.id, k.d, {_PERSON_COLUMNS}
        FROM jsonb_to_recordset(%s::jsonb) AS k(t int, d text)
        JOIN posthog_persondistinctid pdi ON pdi.team_id = k.t AND pdi.distinct_id = k.d
        JOIN posthog_person p ON p.id = pdi.person_id
        ORDER BY pdi.id
        """,
        [_keys_document(keys)],
    )
    return [(row[0], row[1], _record(row[2:])) for row in cursor.fetchall()]


def existing_distinct_ids(cursor: CursorWrapper, keys: Collection[DistinctIdKey]) -> set[DistinctIdKey]:
    """Which of these keys own a person already; no lock (the batch will not change them)."""
    if not keys:
        return set()
    cursor.execute(
        """
        SELECT k.t, k.d
        FROM jsonb_to_recordset(%s::jsonb) AS k(t int, d text)
        JOIN posthog_persondistinctid pdi ON pdi.team_id = k.t AND pdi.distinct_id = k.d
        """,
        [_keys_document(keys)],
    )
    return {(team_id, distinct_id) for team_id, distinct_id in cursor.fetchall()}


def fetch_person(cursor: CursorWrapper, team_id: int, distinct_id: str) -> PersonRecord | None:
    """The person of one distinct id, both rows filtered by team; no lock."""
    cursor.execute(
        f"""
        SELECT {_PERSON_COLUMNS}
        FROM posthog_person p JOIN posthog_persondistinctid pdi ON pdi.person_id = p.id
        WHERE p.team_id = %s AND pdi.team_id = %s AND pdi.distinct_id = %s
        """,
        [team_id, team_id, distinct_id],
    )
    row = cursor.fetchone()
    return None if row is None else _record(row)


def insert_persons(cursor: CursorWrapper, persons: Sequence[PersonRecord]) -> None:
    """Insert new persons in one statement and give each its row id.

    The properties written become each record's ``stored_properties``."""
    if not persons:
        return
    texts = [jsonb_text(person.properties) for person in persons]
    # The properties are JSON already: splice them in rather than encode them twice.
    document = ",".join(
        f'{{"c":"{person.created_at.isoformat()}","p":{text},"t":{person.team_id},'
        f'"i":{_json_bool(person.is_identified)},"u":"{person.uuid}"}}'
        for person, text in zip(persons, texts, strict=True)
    )
    version_column, version_value = (", version", ", 0") if _versioned()[0] else ("", "")
    cursor.execute(
        f"""
        INSERT INTO posthog_person (created_at, properties, team_id, is_user_id, is_identified, uuid{version_column})
        SELECT c, p, t, NULL, i, u{version_value}
        FROM jsonb_to_recordset(%s::jsonb) AS v(c timestamptz, p jsonb, t int, i bool, u uuid)
        RETURNING id, uuid
        """,
        [f"[{document}]"],
    )
    ids = {str(uuid): row_id for row_id, uuid in cursor.fetchall()}
    for person in persons:
        person.id = ids[person.uuid]
        person.stored_properties = person.properties
        person.touched = person.changed = False


def insert_distinct_ids(cursor: CursorWrapper, rows: Sequence[tuple[int, str, int]]) -> dict[DistinctIdKey, int]:
    """Insert ``(team_id, distinct_id, person_id)`` rows in the given order; return the row id of each key inserted.

    A key another transaction holds already is skipped, not an error (ON
    CONFLICT DO NOTHING waits for that transaction first), so the caller can
    tell it lost a race without aborting its own transaction. Rows are
    inserted in order, which is the order a person's distinct ids list in."""
    if not rows:
        return {}
    version_column, version_value = (", version", ", 0") if _versioned()[1] else ("", "")
    cursor.execute(
        f"""
        INSERT INTO posthog_persondistinctid (team_id, distinct_id, person_id{version_column})
        SELECT (r ->> 0)::int, r ->> 1, (r ->> 2)::bigint{version_value}
        FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS v(r, n)
        ORDER BY n
        ON CONFLICT (team_id, distinct_id) DO NOTHING
        RETURNING team_id, distinct_id, id
        """,
        [json.dumps(rows)],
    )
    return {(team_id, distinct_id): row_id for team_id, distinct_id, row_id in cursor.fetchall()}


def update_persons(cursor: CursorWrapper, persons: Sequence[PersonRecord]) -> None:
    """Write properties, is_identified and created_at of many persons in one statement."""
    if not persons:
        return
    texts = [jsonb_text(person.properties) for person in persons]
    document = ",".join(
        f'{{"id":{person.id},"p":{text},"i":{_json_bool(person.is_identified)},"c":"{person.created_at.isoformat()}"}}'
        for person, text in zip(persons, texts, strict=True)
    )
    version = ", version = COALESCE(p.version, 0) + 1" if _versioned()[0] else ""
    cursor.execute(
        f"""
        UPDATE posthog_person AS p
        SET properties = v.p, is_identified = v.i, created_at = v.c{version}
        FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, p jsonb, i bool, c timestamptz)
        WHERE p.id = v.id
        """,
        [f"[{document}]"],
    )
    for person in persons:
        person.stored_properties = person.properties
        person.touched = person.changed = False


def merge_rows(cursor: CursorWrapper, team_id: int, into_id: int, other_id: int) -> list[tuple[int, str]]:
    """Move every distinct id and cohort membership of ``other`` to ``into`` and delete ``other``.

    One statement, so the merge is all or nothing with the caller's
    transaction (the original ran these steps unprotected). Returns the
    ``(row id, distinct id)`` of the distinct ids moved, in row id order."""
    version = ", version = COALESCE(version, 0) + 1" if _versioned()[1] else ""
    cursor.execute(
        f"""
        WITH moved AS (
            UPDATE posthog_persondistinctid SET person_id = %(into)s{version}
            WHERE person_id = %(other)s AND team_id = %(team)s
            RETURNING id, distinct_id
        ), cohorts AS (
            UPDATE posthog_cohortpeople SET person_id = %(into)s WHERE person_id = %(other)s
        ), gone AS (
            DELETE FROM posthog_person WHERE id = %(other)s
        )
        SELECT id, distinct_id FROM moved ORDER BY id
        """,
        {"into": into_id, "other": other_id, "team": team_id},
    )
    return [(row_id, distinct_id) for row_id, distinct_id in cursor.fetchall()]
