"""The export lane through `./manage.py run_plugin_server`: slow exports never hold up storing, and
exports interrupted by a SIGKILL or a SIGTERM run after the restart (at least once)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

import pytest

from plugin_server.models import PluginLogEntry, Team
from tests.e2e.test_server_e2e import send_events, start_server, stored  # noqa: F401 — the fixture
from tests.factories import create_plugin, create_plugin_config, create_team
from tests.manage_process import wait_for
from tests.webhook import RecordingWebhook, webhook  # noqa: F401 — the fixture

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

EXPORTER = """
def on_event(event, meta):
    meta.fetch(meta.config['url'] + '/' + str(event['properties']['n']))
"""


@pytest.fixture
def team(webhook: RecordingWebhook) -> Team:
    webhook.delay = 0.3  # a slow export target
    team = create_team()
    plugin = create_plugin(organization=team.organization, source=EXPORTER)
    create_plugin_config(team=team, plugin=plugin, config={"url": webhook.url})
    return team


SLOW_EXPORTS = {
    "PLUGIN_FETCH_ALLOW_PRIVATE_NETWORKS": "true",
    # Two calls at once against a 300 ms webhook: 80 exports take ~12 s, storing them well under that.
    "TASKS_PER_WORKER": "2",
    "EXPORT_ORPHAN_SECONDS": "1",
    "LOG_LEVEL": "info",
}


def exported(webhook: RecordingWebhook) -> set[int]:
    return {int(path.strip("/")) for path in webhook.seen}


def test_a_sigkill_mid_export_leaves_the_exports_to_the_restarted_server(
    team: Team, webhook: RecordingWebhook, unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """All 80 events are stored while the exports have barely started; after a SIGKILL, the next server
    runs the exports that were waiting: every event exported at least once."""
    total = 80
    first = start_server(**SLOW_EXPORTS)
    send_events(unique_name, team, total)
    wait_for(lambda: stored(team) == total, 60, f"{total} stored events", first)
    assert len(exported(webhook)) < total / 2, "storing waited for the exports"
    wait_for(lambda: len(exported(webhook)) >= 4, 30, "the first exports", first)
    first.kill()
    first.wait(10)
    assert len(exported(webhook)) < total
    second = start_server(**SLOW_EXPORTS)
    wait_for(lambda: exported(webhook) == set(range(total)), 90, "every event exported", second)
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0


def test_a_sigterm_leaves_waiting_exports_journaled_and_says_so(
    team: Team, webhook: RecordingWebhook, unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """A stop drains for EXPORT_DRAIN_SECONDS, then exits 0 leaving the rest journaled, with a line in the
    plugin's log; the next server exports them at once."""
    total = 60
    first = start_server(**SLOW_EXPORTS, EXPORT_DRAIN_SECONDS="0.5")
    send_events(unique_name, team, total)
    wait_for(lambda: stored(team) == total, 60, f"{total} stored events", first)
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    assert len(exported(webhook)) < total
    line = PluginLogEntry.objects.filter(team_id=team.id, message__contains="still waiting for export when the server stopped")
    assert line.exists()
    second = start_server(**SLOW_EXPORTS)
    wait_for(lambda: exported(webhook) == set(range(total)), 90, "every event exported", second)
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
