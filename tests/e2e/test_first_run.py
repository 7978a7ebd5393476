"""A newcomer's first hour, as commands run in a terminal: the database, a first event, a clear failure.

Each test runs ``manage.py`` as a subprocess, the way the README tells a user to.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.test_server_e2e import start_server, team  # noqa: F401  (fixtures)
from tests.manage_process import run_manage
from plugin_server.models import Team

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]


def _last_line(stderr: str) -> str:
    """The last line that is not a system-check warning."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def test_send_test_events_sends_as_posthog_does_and_waits_for_them_stored(
    team: Team, unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]], tmp_path: Path  # noqa: F811
) -> None:
    """`send_test_events --wait` pushes Celery tasks a running server stores through the team's plugin, and shows them."""
    server = start_server()
    result = run_manage(
        "send_test_events", "--team", str(team.id), "--count", "3", "--event", "signed up", "--properties", '{"plan": "free"}',
        "--wait", "60", cwd=tmp_path, PLUGINS_CELERY_QUEUE=unique_name,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Sent 3 signed up event(s) for team {team.id} ({team.name}) to the Celery queue {unique_name} on redis://")
    stored = [line for line in lines if line.startswith("Stored: signed up for test-user, properties ")]
    assert len(stored) == 3
    properties = json.loads(stored[0].split("properties ", 1)[1])
    assert properties["plan"] == "free" and properties["processed"] == "hell yes"
    assert server.poll() is None


def test_send_test_events_without_a_server_says_what_to_check(team: Team, unique_name: str, tmp_path: Path) -> None:  # noqa: F811
    """With nothing consuming the queue, --wait ends with a clear line, exit 1."""
    result = run_manage("send_test_events", "--team", str(team.id), "--wait", "1", cwd=tmp_path, PLUGINS_CELERY_QUEUE=unique_name)
    assert result.returncode == 1
    assert _last_line(result.stderr) == (
        "CommandError: 0 of 1 event(s) stored after 1 s: is ./manage.py run_plugin_server running "
        "(on this database and queue)? A plugin may also have dropped them."
    )


@pytest.mark.parametrize("command", ["migrate", "run_plugin_server", "setup_demo"])
def test_a_database_that_cannot_be_reached_is_one_line(command: str, tmp_path: Path) -> None:
    """Nothing answers on the database's port: one line naming the (masked) URL and the cause, no traceback, exit 1."""
    result = run_manage(command, cwd=tmp_path, DATABASE_URL="postgres://someone:hunter2@127.0.0.1:1/posthog")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    assert _last_line(result.stderr) == (
        'Cannot reach the database postgres://someone:********@127.0.0.1:1/posthog: connection to server at "127.0.0.1", '
        "port 1 failed: Connection refused (is it running? bin/services up starts one)"
    )


def test_a_redis_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    """run_plugin_server with Redis away: one line naming Redis's (masked) URL, no traceback, exit 1."""
    result = run_manage("run_plugin_server", cwd=tmp_path, REDIS_URL="redis://:hunter2@127.0.0.1:1/0")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    assert _last_line(result.stderr).startswith("Cannot reach Redis at redis://:********@127.0.0.1:1/0: Error 111 connecting to 127.0.0.1:1")


def test_the_default_database_url_connects_as_the_postgres_user_bin_services_provides(tmp_path: Path) -> None:
    """With DATABASE_URL unset the server connects as "postgres" to 127.0.0.1 (not as the OS user), and it works."""
    environment = {"DATABASE_URL": ""}  # empty = unset for the settings reader
    result = run_manage(
        "shell", "-c", "from django.db import connection; connection.ensure_connection(); "
        "print(connection.settings_dict['USER'], connection.settings_dict['HOST'])",
        cwd=tmp_path, **environment,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["postgres", "127.0.0.1"]
