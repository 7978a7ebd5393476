"""Persons and distinct ids for a batch of events.

The ingester builds one :class:`PersonUpdate` per event and calls
:meth:`PersonManager.apply` inside its transaction, before it writes the
events. The manager:

- loads and row-locks the persons of the batch's distinct ids in one query
  (distinct ids the cache knows, of events without ``$set``, need none);
- replays identify / alias / merge, new persons and ``$set`` / ``$set_once`` /
  ``$increment`` in event order, in memory;
- writes new persons, new distinct ids and changed persons with one
  multi-row statement each.

Two servers ingesting one person at once are safe: rows are locked in id
order, distinct ids are inserted with ``ON CONFLICT DO NOTHING``, and a batch
that lost a race (or a deadlock) is rolled back to its savepoint and
replayed on fresh rows, up to ``max_attempts`` times; then
:class:`~plugin_server.exceptions.RetriableError` is raised.

Metrics: ``ingestion.persons.created``, ``.merged``, ``.retries``,
``.invalid_distinct_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.utils import timezone

from plugin_server.app_settings import app_setting
from plugin_server.exceptions import RetriableError
from plugin_server.ingestion.distinct_ids import DistinctIdCache
from plugin_server.ingestion.person_batch import DistinctIdChange, PersonBatch, PersonChanges, RaceLost
from plugin_server.ingestion.person_store import PersonRecord, current_rows, fetch_person
from plugin_server.metrics import PERSONS_CREATED, PERSONS_INVALID_DISTINCT_ID, PERSONS_MERGED, PERSONS_RETRIES, get_metrics
from plugin_server.models import persons_db_alias

__all__ = ["DistinctIdChange", "PersonChanges", "PersonManager", "PersonRecord", "PersonUpdate"]

logger = logging.getLogger(__name__)

METRIC_PERSONS_CREATED = PERSONS_CREATED
METRIC_PERSONS_MERGED = PERSONS_MERGED
METRIC_PERSON_RETRIES = PERSONS_RETRIES
METRIC_INVALID_DISTINCT_ID = PERSONS_INVALID_DISTINCT_ID

# Deadlock detected, serialization failure: the batch can simply run again.
_RETRIABLE_SQLSTATES = frozenset({"40P01", "40001"})


@dataclass(slots=True)
class PersonUpdate:
    """What one event asks of the person side, in arrival order.

    ``properties`` are the event's final properties, with ``$set``,
    ``$set_once``, ``$increment``, ``alias`` and ``$anon_distinct_id``;
    ``new_person_created_at`` is sent_at if given, else now;
    ``person_uuid`` is the uuid for the first person the event creates, when
    the caller chose one; left None, a UUIDT is made at creation (most events
    create no person: making one per event cost 5% of the storing thread)."""

    team_id: int
    distinct_id: str
    event: str
    properties: dict[str, Any]
    new_person_created_at: datetime
    person_uuid: str | None = None


class PersonManager:
    """Creates, merges and updates persons for batches of events; one per ingesting process.

    Holds the distinct-id cache (``DISTINCT_ID_LRU_SIZE`` keys): a key enters
    it only after the transaction that created or read its person commits.
    """

    def __init__(
        self,
        lru_size: int | None = None,
        *,
        clock: Callable[[], datetime] = timezone.now,
        max_attempts: int = 5,
    ) -> None:
        self.distinct_ids = DistinctIdCache(lru_size if lru_size is not None else app_setting("DISTINCT_ID_LRU_SIZE"))
        self._clock = clock
        self._max_attempts = max_attempts

    def apply(self, updates: Sequence[PersonUpdate]) -> PersonChanges:
        """Apply the person side of a batch of events; call it inside the ingester's transaction.

        Returns what was written (for a sink that mirrors persons elsewhere,
        once the transaction commits). Raises RetriableError if the batch
        keeps losing races to other transactions; its own writes are then
        rolled back."""
        if not updates:
            return PersonChanges()
        for attempt in range(1, self._max_attempts + 1):
            try:
                # A savepoint: a lost race undoes only this batch's person work
                # (and releases its row locks) while the caller's transaction goes on.
                # The person tables' database is the host router's choice: when it is
                # not the caller's, this block is a transaction of its own there.
                alias = persons_db_alias()
                with transaction.atomic(using=alias):
                    with connections[alias].cursor() as cursor:
                        batch = PersonBatch(cursor, self.distinct_ids, self._clock)
                        batch.run(updates)
                    known = batch.known_keys()
                    transaction.on_commit(lambda: self.distinct_ids.add(known), using=alias)
                self._count(batch)
                return batch.changes
            except RaceLost as race:
                reason = f"distinct ids created concurrently: {race.args[0]}"
            except DatabaseError as error:
                sqlstate = getattr(error.__cause__, "sqlstate", None)
                if sqlstate not in _RETRIABLE_SQLSTATES:
                    raise
                reason = f"{type(error.__cause__).__name__}: {error}"
            get_metrics().incr(METRIC_PERSON_RETRIES)
            logger.info("replaying the person side of a batch (attempt %d): %s", attempt, reason)
        raise RetriableError(f"persons of the batch still conflict after {self._max_attempts} attempts")

    def _count(self, batch: PersonBatch) -> None:
        backend = get_metrics()
        if batch.created:
            backend.incr(METRIC_PERSONS_CREATED, batch.created)
        if batch.merged:
            backend.incr(METRIC_PERSONS_MERGED, batch.merged)
        for team_id, count in batch.invalid.items():
            backend.incr(METRIC_INVALID_DISTINCT_ID, count, tags={"team_id": team_id})

    def current_changes(self, keys: Collection[tuple[int, str]]) -> PersonChanges:
        """The stored persons and distinct id rows of these keys, as changes to mirror again
        (one query): persons in ``updated``, their distinct ids in ``distinct_ids``."""
        changes = PersonChanges()
        with connections[persons_db_alias()].cursor() as cursor:
            rows = current_rows(cursor, keys)
        seen: set[str] = set()
        for row_id, distinct_id, person in rows:
            if person.uuid not in seen:
                seen.add(person.uuid)
                changes.updated.append(person)
            changes.distinct_ids.append(DistinctIdChange(row_id, person.team_id, distinct_id, person.uuid))
        return changes

    def person_for(self, team_id: int, distinct_id: str) -> PersonRecord | None:
        """The person owning a distinct id in a team, or None."""
        with connections[persons_db_alias(write=False)].cursor() as cursor:
            return fetch_person(cursor, team_id, distinct_id)
