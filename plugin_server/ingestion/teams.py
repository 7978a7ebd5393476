"""Teams as ingestion reads them, cached per process.

A team is read at most once per ``TEAM_CACHE_SECONDS`` (30 s, as the
original) and a whole batch's missing teams in one query. An unknown team is
not cached, so a team created a moment ago is found on its next event. The
cache is bounded: the least recently used teams are dropped past
``max_teams``.
"""

from __future__ import annotations

import time
from contextlib import suppress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar
from uuid import UUID

from django.db import ProgrammingError, connection, transaction

from plugin_server.models import OrganizationMembership, Team

TEAM_CACHE_SECONDS = 30.0
Clock = Callable[[], float]
UNDEFINED_TABLE = "42P01"
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class TeamInfo:
    """The columns of ``posthog_team`` ingestion needs."""

    id: int
    uuid: UUID
    organization_id: UUID
    anonymize_ips: bool
    ingested_event: bool
    slack_incoming_webhook: str | None


class Telemetry(Protocol):
    """Reports a team's first ingested event to PostHog's own product analytics (optional, off by default).

    The original identified every user of the team's organization and
    captured ``first team event ingested`` for each; ``properties`` holds
    ``sdk``, ``realm`` and ``host`` of that first event."""

    def first_team_event(self, team: TeamInfo, properties: dict[str, Any]) -> None: ...


_TEAM_FIELDS = ("id", "uuid", "organization_id", "anonymize_ips", "ingested_event", "slack_incoming_webhook")


class TeamManager:
    """Per-process team cache, plus the "should this team get webhooks" answer.

    ``clock`` returns seconds (monotonic in production); tests inject one to
    step over the 30 s expiry without sleeping."""

    def __init__(self, clock: Clock = time.monotonic, max_teams: int = 10_000) -> None:
        self._clock = clock
        self._max_teams = max_teams
        self._teams: OrderedDict[int, tuple[float, TeamInfo]] = OrderedDict()
        self._webhooks: OrderedDict[int, tuple[float, bool]] = OrderedDict()

    def fetch_teams(self, team_ids: Iterable[int]) -> dict[int, TeamInfo]:
        """The known teams among ``team_ids``; one query for all those not freshly cached."""
        now = self._clock()
        found: dict[int, TeamInfo] = {}
        missing: list[int] = []
        for team_id in set(team_ids):
            cached = self._teams.get(team_id)
            if cached is not None and now - cached[0] < TEAM_CACHE_SECONDS:
                # The consumer's two threads share this cache (events are prepared on one, stored
                # on the other): a key evicted meanwhile by the other thread is no error.
                with suppress(KeyError):
                    self._teams.move_to_end(team_id)
                found[team_id] = cached[1]
            else:
                missing.append(team_id)
        if missing:
            for row in Team.objects.filter(id__in=missing).values(*_TEAM_FIELDS):
                team = TeamInfo(**row)
                found[team.id] = team
                self._remember(self._teams, team.id, (now, team))
        return found

    def fetch_team(self, team_id: int) -> TeamInfo | None:
        """One team, or None when there is no such team."""
        return self.fetch_teams([team_id]).get(team_id)

    def record_first_events(self, team_ids: Iterable[int]) -> list[TeamInfo]:
        """Set ``ingested_event`` on those of these teams that never ingested; returns them.

        Costs no query when every team is cached as having ingested. The
        UPDATE reports which rows it really changed, so of two servers racing
        on a team's first event only one reports it."""
        candidates = sorted(
            team_id for team_id in set(team_ids) if not _ingested(self._teams.get(team_id))
        )
        if not candidates:
            return []
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "UPDATE posthog_team SET ingested_event = true WHERE id = ANY(%s) AND NOT ingested_event RETURNING id",
                [candidates],
            )
            changed = {row[0] for row in cursor.fetchall()}
        self._mark_ingested(candidates)
        cached = [self._teams.get(team_id) for team_id in sorted(changed)]
        return [entry[1] for entry in cached if entry is not None]

    def organization_user_distinct_ids(self, organization_id: UUID) -> list[str]:
        """The distinct ids of the organization's users, for first-event telemetry."""
        return [
            distinct_id
            for distinct_id in OrganizationMembership.objects.filter(organization_id=organization_id)
            .order_by("user_id")
            .values_list("user__distinct_id", flat=True)
            if distinct_id
        ]

    def _mark_ingested(self, team_ids: Iterable[int]) -> None:
        for team_id in team_ids:
            cached = self._teams.get(team_id)
            if cached is not None and not cached[1].ingested_event:
                self._teams[team_id] = (cached[0], replace(cached[1], ingested_event=True))

    def should_send_webhooks(self, team_id: int) -> bool:
        """True when the team has a Slack webhook or an ``action_performed`` hook; cached 30 s."""
        now = self._clock()
        cached = self._webhooks.get(team_id)
        if cached is not None and now - cached[0] < TEAM_CACHE_SECONDS:
            return cached[1]
        answer = self._query_webhooks(team_id)
        self._remember(self._webhooks, team_id, (now, answer))
        return answer

    def _query_webhooks(self, team_id: int) -> bool:
        # Read the team afresh: the webhook answer has its own 30 s clock.
        row = Team.objects.filter(id=team_id).values_list("slack_incoming_webhook").first()
        if row is None:
            return False
        if row[0]:
            return True
        try:
            # A savepoint, so that a missing table does not break a surrounding transaction.
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT COUNT(*) FROM ee_hook WHERE team_id = %s AND event = 'action_performed'", [team_id])
                (count,) = cursor.fetchone()
        except ProgrammingError as error:
            if getattr(error.__cause__, "sqlstate", None) == UNDEFINED_TABLE:
                return False  # open-source PostHog has no hooks table
            raise
        return bool(count)

    def _remember(self, cache: OrderedDict[int, tuple[float, _V]], key: int, value: tuple[float, _V]) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self._max_teams:
            cache.popitem(last=False)


def _ingested(cached: tuple[float, TeamInfo] | None) -> bool:
    return cached is not None and cached[1].ingested_event
