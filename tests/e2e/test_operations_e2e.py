"""Operations of a real `run_plugin_server` process: Sentry reports, the staleness restart, the progress line."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from plugin_server.models import Team
from tests.e2e.test_server_e2e import send_events, start_server, stored, wait_for  # noqa: F401 -- start_server is a fixture
from tests.factories import create_plugin, create_plugin_config, create_team
from tests.sentry_collector import sentry_collector

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

FAILING = """
def process_event(event, meta):
    if event['properties']['n'] == 0:
        raise ValueError('the plugin broke on event 0')
    return event
"""


def test_sentry_gets_plugin_errors_tagged_and_the_staleness_restart(
    unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """SENTRY_DSN at a local endpoint: a plugin's error arrives tagged team / plugin / plugin_config; with
    STALENESS_RESTART_SECONDS=3 a server that ingests nothing more says so, reports it and exits 1."""
    team: Team = create_team()
    plugin = create_plugin(organization=team.organization, source=FAILING, name="breaker")
    config = create_plugin_config(team=team, plugin=plugin)
    with sentry_collector() as sentry:
        server = start_server(SENTRY_DSN=sentry.dsn, STALENESS_RESTART_SECONDS="3", LOG_LEVEL="info",
                              SHUTDOWN_TIMEOUT="20")
        send_events(unique_name, team, 3)
        wait_for(lambda: stored(team) == 3, 60, "3 stored events", server)
        wait_for(lambda: sentry.find("the plugin broke on event 0") is not None, 30, "the plugin error in Sentry", server)
        error = sentry.find("the plugin broke on event 0")
        assert error is not None
        assert error["tags"]["team"] == str(team.id)
        assert error["tags"]["plugin"] == "breaker"
        assert error["tags"]["plugin_config"] == str(config.id)
        assert error["extra"]["stack"].startswith("Traceback")
        # Nothing more arrives: after 3 s without activity the server restarts itself (exit 1).
        assert server.wait(60) == 1
        stale = sentry.find("has not ingested events for over 3 seconds! Rebooting.")
        assert stale is not None, sentry.messages()
        assert stale["extra"]["lastActivityType"] in ("ingestEvent", "onEvent")
        assert stale["extra"]["instanceId"] and stale["extra"]["lastActivity"]
