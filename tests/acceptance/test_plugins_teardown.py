"""acceptance.md "Teardown" (teardown.test.ts) through the whole server: `./manage.py run_plugin_server` as a
subprocess on the spec's rows, stopped with SIGTERM."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

import pytest

from plugin_server.models import PluginConfig
from tests.acceptance.plugin_fixtures import PASS_THROUGH, install_spec, spec_team
from tests.e2e.test_server_e2e import send_events, start_server, stored, wait_for  # noqa: F401  (start_server: fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

TEARDOWN = PASS_THROUGH + "def teardown_plugin(meta):\n    raise RuntimeError('This Happened In The Teardown Palace')\n"


def test_teardown_code_runs_when_the_server_stops(unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]]) -> None:
    """teardown_plugin raises `This Happened In The Teardown Palace`: while the server runs (an event went through
    plugin 60) config 39's error is null; after SIGTERM the server exits 0 and the error is that message."""
    install_spec(TEARDOWN)
    team = spec_team()
    server = start_server()
    send_events(unique_name, team, 1)
    wait_for(lambda: stored(team) == 1, 60, "the event stored", server)
    assert PluginConfig.objects.get(id=39).error is None
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert PluginConfig.objects.get(id=39).error["message"] == "This Happened In The Teardown Palace"
