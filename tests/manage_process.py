"""Run ``manage.py`` as a user does: a subprocess, on the test database, from any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "manage.py"


def tests_database_url() -> str:
    """The URL of the database the test run uses (data of a transaction=True test is visible there)."""
    db = connection.settings_dict
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def manage_environment(**env: str) -> dict[str, str]:
    """The environment of a production-like run (settings.base) on the test database and Redis."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings.base",
        "DATABASE_URL": tests_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        # A key of its own, as a deployment sets one: no plugin_server.W001 warning in the output.
        "SECRET_KEY": "tests-" + "k" * 50,
        **env,
    }


def run_manage(*args: str, cwd: Path | str = ROOT, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """``python <repo>/manage.py ARGS`` from ``cwd``; output captured as text."""
    return subprocess.run(
        [sys.executable, str(MANAGE), *args], cwd=cwd, env=manage_environment(**env), capture_output=True, text=True,
        timeout=timeout,
    )


def wait_for(predicate: Callable[[], bool], seconds: float, what: str, process: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``predicate`` for up to ``seconds``; fail at once if ``process`` exits meanwhile."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited with {process.returncode} while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class ServerProcesses:
    """``run_plugin_server`` subprocesses of one test; any still running at the end is killed."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, environment: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        server = subprocess.Popen([sys.executable, "manage.py", "run_plugin_server", *args], cwd=ROOT, env=environment)
        self.started.append(server)
        return server

    def kill_all(self) -> None:
        for server in self.started:
            if server.poll() is None:
                server.kill()
                server.wait(10)
