"""Project token → team, remembered per process for ``CAPTURE_TOKEN_CACHE_TTL`` seconds.

Every capture request names its project by token; a query per request
would be the endpoint's only database round trip, so the answer (and the
absence of a team: a client with a wrong key keeps sending) is kept in a
small in-process map. A token whose team was just created is seen within the
TTL; so is a change of ``anonymize_ips``. PostHog's capture of 2021 also
accepted a personal API key with a ``project_id``; this port does not keep
users, so such a request is refused as an unknown key.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from plugin_server.models import Team

# Bounds the map: a flood of random tokens must not grow it for ever.
MAX_ENTRIES = 10_000
TEST_TOKEN_PREFIX = "test_"


@dataclass(frozen=True, slots=True)
class TeamInfo:
    """What capture needs of a team."""

    id: int
    anonymize_ips: bool


def split_test_token(token: str) -> tuple[str, bool]:
    """PostHog's ``test_<key>`` convention: the key, and whether events are the test environment's."""
    if token.startswith(TEST_TOKEN_PREFIX):
        return token[len(TEST_TOKEN_PREFIX) :], True
    return token, False


def _load(token: str) -> TeamInfo | None:
    row = Team.objects.filter(api_token=token).values_list("id", "anonymize_ips").first()
    return None if row is None else TeamInfo(id=row[0], anonymize_ips=bool(row[1]))


class TeamCache:
    """Thread-safe token → :class:`TeamInfo` (or ``None``) with a time to live."""

    def __init__(self, ttl: float, load: Callable[[str], TeamInfo | None] = _load, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._load = load
        self._clock = clock
        self._entries: dict[str, tuple[float, TeamInfo | None]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> TeamInfo | None:
        now = self._clock()
        entry = self._entries.get(token)
        if entry is not None and entry[0] > now:
            return entry[1]
        team = self._load(token)
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[token] = (now + self._ttl, team)
        return team

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
