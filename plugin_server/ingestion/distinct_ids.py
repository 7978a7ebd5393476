"""The distinct-id cache: "is this (team, distinct id) already a person?".

One per ingesting process. It remembers at most ``DISTINCT_ID_LRU_SIZE`` keys,
each for an hour after its last hit, so that the events of known users cost no
person query at all. The batched :class:`~plugin_server.ingestion.persons.PersonManager`
uses :meth:`DistinctIdCache.contains` and :meth:`DistinctIdCache.add` (adding keys
only once the transaction that created the person has committed, so a rolled
back batch cannot leave a key for a person that does not exist);
:meth:`DistinctIdCache.is_new` is the original's one-key check, query included.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from django.db import connections

from plugin_server.models import persons_db_alias

DistinctIdKey = tuple[int, str]

# The original keeps a key for an hour, the age reset on every hit.
DEFAULT_MAX_AGE_SECONDS = 3600.0


class DistinctIdCache:
    """A bounded LRU of ``(team_id, distinct_id)`` keys known to own a person.

    Tuning: the size is ``DISTINCT_ID_LRU_SIZE`` (default 10 000). A hit saves
    one person lookup per event of a user without ``$set``; a miss costs a
    place in the batch's one person query, so a cache much smaller than the
    number of active users only makes that query larger, never wrong.
    """

    def __init__(
        self,
        max_size: int,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_size < 1:
            raise ValueError("the distinct-id cache needs room for at least one key")
        self.max_size = max_size
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        # key -> time of the last hit; the order is least recently used first.
        self._entries: OrderedDict[DistinctIdKey, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def contains(self, team_id: int, distinct_id: str) -> bool:
        """True if the key is cached and not expired; a hit renews its age."""
        key = (team_id, distinct_id)
        seen_at = self._entries.get(key)
        if seen_at is None:
            return False
        now = self._clock()
        if now - seen_at > self.max_age_seconds:
            del self._entries[key]
            return False
        self._entries[key] = now
        self._entries.move_to_end(key)
        return True

    def add(self, keys: Iterable[DistinctIdKey]) -> None:
        """Remember keys as existing, evicting the least recently used beyond the size."""
        now = self._clock()
        for key in keys:
            self._entries[key] = now
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def discard(self, keys: Iterable[DistinctIdKey]) -> None:
        """Forget keys (for example the distinct ids of a deleted person)."""
        for key in keys:
            self._entries.pop(key, None)

    def is_new(self, team_id: int, distinct_id: str) -> bool:
        """The original's check: a cached key is not new; otherwise cache it, then count its rows.

        As at v0.21.3 the key is cached *before* anything is created, so a
        second check of a brand-new id answers "not new"; callers that create
        the person in a transaction should prefer :meth:`contains` and
        :meth:`add` after commit.
        """
        if self.contains(team_id, distinct_id):
            return False
        self.add([(team_id, distinct_id)])
        with connections[persons_db_alias(write=False)].cursor() as cursor:
            cursor.execute(
                "SELECT COUNT(*) FROM posthog_persondistinctid WHERE team_id = %s AND distinct_id = %s",
                [team_id, distinct_id],
            )
            row = cursor.fetchone()
        return row is None or row[0] == 0
