"""The team cache and the webhook flag (spec: ingestion.md §6.1; acceptance.md "Team manager")."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from plugin_server.ingestion.teams import TeamManager
from plugin_server.models import Team
from tests.factories import create_team

pytestmark = pytest.mark.django_db


class Clock:
    """Seconds that a test moves by hand."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(11 * 3600 + 5)  # 11:00:05


@pytest.fixture
def manager(clock: Clock) -> TeamManager:
    return TeamManager(clock=clock)


def create_ee_hook_table(team: Team) -> None:
    """The EE hooks table (absent from open-source PostHog), with one action_performed hook."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE ee_hook (id varchar(50) PRIMARY KEY, team_id int, user_id int, event varchar(50),"
            " target varchar(500), created timestamptz, updated timestamptz)"
        )
        cursor.execute("INSERT INTO ee_hook VALUES ('h1', %s, 1, 'action_performed', 'https://x.com/', now(), now())", [team.id])


def test_returns_null_when_no_such_team(manager: TeamManager) -> None:
    """An unknown team is None."""
    assert manager.fetch_team(-1) is None


def test_a_team_is_read_once_per_30_seconds(manager: TeamManager, clock: Clock) -> None:
    """A cached team costs no query for 30 s; then it is read again, with the changes made meanwhile."""
    team = create_team(anonymize_ips=False)
    assert manager.fetch_team(team.id).anonymize_ips is False
    Team.objects.filter(id=team.id).update(anonymize_ips=True)
    clock.now += 29
    with CaptureQueriesContext(connection) as queries:
        assert manager.fetch_team(team.id).anonymize_ips is False
    assert len(queries) == 0
    clock.now += 2
    assert manager.fetch_team(team.id).anonymize_ips is True


def test_teams_of_a_batch_cost_one_query_and_unknown_teams_are_not_cached(manager: TeamManager) -> None:
    """Many teams are read in one query; an unknown team is asked for again next time."""
    teams = [create_team() for _ in range(5)]
    with CaptureQueriesContext(connection) as queries:
        found = manager.fetch_teams([team.id for team in teams] + [-5])
    assert (len(queries), sorted(found)) == (1, sorted(team.id for team in teams))
    with CaptureQueriesContext(connection) as queries:
        manager.fetch_teams([team.id for team in teams] + [-5])
    assert len(queries) == 1  # only the unknown team


def test_the_cache_is_bounded(clock: Clock) -> None:
    """Past max_teams, the least recently used team is dropped (and read again when needed)."""
    manager = TeamManager(clock=clock, max_teams=2)
    first, second, third = (create_team() for _ in range(3))
    for team in (first, second, third):
        manager.fetch_team(team.id)
    with CaptureQueriesContext(connection) as queries:
        manager.fetch_teams([second.id, third.id])
    assert len(queries) == 0
    with CaptureQueriesContext(connection) as queries:
        manager.fetch_team(first.id)
    assert len(queries) == 1


def test_should_send_webhooks_unknown_team(manager: TeamManager) -> None:
    """An unknown team gets no webhooks."""
    assert manager.should_send_webhooks(-1) is False


def test_should_send_webhooks_no_hooks_and_no_slack_webhook(manager: TeamManager) -> None:
    """No Slack webhook and no hooks table (open-source PostHog): no webhooks."""
    assert manager.should_send_webhooks(create_team().id) is False


def test_should_send_webhooks_hooks_set_up(manager: TeamManager) -> None:
    """A Slack webhook and an action_performed hook: webhooks."""
    team = create_team(slack_incoming_webhook="https://hooks.slack.com/x")
    create_ee_hook_table(team)
    assert manager.should_send_webhooks(team.id) is True


def test_should_send_webhooks_with_only_an_ee_hook(manager: TeamManager) -> None:
    """An action_performed hook alone is enough."""
    team = create_team()
    create_ee_hook_table(team)
    assert manager.should_send_webhooks(team.id) is True


def test_should_send_webhooks_caches_for_30_seconds(manager: TeamManager, clock: Clock) -> None:
    """At 11:00:05 false; a Slack webhook is added; at 11:00:10 still false, no query; at 11:00:45 true, one query."""
    team = create_team()
    assert manager.should_send_webhooks(team.id) is False
    Team.objects.filter(id=team.id).update(slack_incoming_webhook="https://x.com/")
    clock.now += 5
    with CaptureQueriesContext(connection) as queries:
        assert manager.should_send_webhooks(team.id) is False
    assert len(queries) == 0
    clock.now += 35
    with CaptureQueriesContext(connection) as queries:
        assert manager.should_send_webhooks(team.id) is True
    assert len(queries) == 1


def test_record_first_events(manager: TeamManager) -> None:
    """Teams that never ingested are flagged once and returned; teams known to have ingested cost no query."""
    fresh, old = create_team(ingested_event=False), create_team(ingested_event=True)
    manager.fetch_teams([fresh.id, old.id])
    assert [team.id for team in manager.record_first_events([fresh.id, old.id])] == [fresh.id]
    assert Team.objects.get(id=fresh.id).ingested_event is True
    assert manager.fetch_team(fresh.id).ingested_event is True
    with CaptureQueriesContext(connection) as queries:
        assert manager.record_first_events([fresh.id, old.id]) == []
    assert len(queries) == 0
