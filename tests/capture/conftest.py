"""Fixtures of the capture tests: a team with a token, a queue of the test's own, a fresh token
cache, and the standalone server (run_plugin_server with CAPTURE_ENABLED) the real SDKs talk to."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from django.conf import settings
from django.db import connection
from django.test import override_settings

from plugin_server.capture.views import team_cache
from plugin_server.config import get_config
from plugin_server.events import Delivery, PluginEvent
from plugin_server.ingestion.decode import decode
from plugin_server.models import Team
from tests.e2e.test_server_e2e import wait_for
from tests.factories import create_team

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_team_cache() -> Iterator[None]:
    # Tokens repeat across tests (each test's rows are rolled back): forget them.
    team_cache().clear()
    yield
    team_cache().clear()


@pytest.fixture
def team() -> Team:
    return create_team(api_token="phc_capture_test_token")


@pytest.fixture
def queue(unique_name: str) -> Iterator[str]:
    """PLUGINS_CELERY_QUEUE for this test only."""
    with override_settings(PLUGINS_CELERY_QUEUE=unique_name, KAFKA_ENABLED=False):
        yield unique_name


def queued_events(client: redis.Redis, queue: str) -> list[PluginEvent]:
    """Every event on the queue, oldest first, decoded by the ingestion consumer's own decoder."""
    raw = client.lrange(queue, 0, -1)
    return [decode(Delivery(payload, None, queue), get_config().ingestion_max_message_bytes) for payload in reversed(raw)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class StandaloneServer:
    """A ``run_plugin_server`` subprocess serving capture on ``url``."""

    url: str
    process: subprocess.Popen[bytes]
    queue: str

    def wait(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        wait_for(predicate, seconds, what, self.process)


@pytest.fixture
def standalone_server(unique_name: str) -> Iterator[StandaloneServer]:
    """``./manage.py run_plugin_server`` with CAPTURE_ENABLED on a free port of 127.0.0.1, on the test
    database and this test's queue: the README's one-command standalone server."""
    db = connection.settings_dict
    port = free_port()
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings.base",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
        "REDIS_URL": settings.REDIS_URL,
        "PLUGINS_CELERY_QUEUE": unique_name,
        "PLUGINS_RELOAD_PUBSUB_CHANNEL": f"{unique_name}-reload",
        "CAPTURE_ENABLED": "true",
        "DISABLE_WEB": "false",
        "WEB_HOSTNAME": "127.0.0.1",
        "WEB_PORT": str(port),
        "WORKER_CONCURRENCY": "1",
        "INGESTION_POLL_TIMEOUT": "0.2",
        "LOG_LEVEL": "warn",
    }
    process = subprocess.Popen([sys.executable, "manage.py", "run_plugin_server"], cwd=ROOT, env=environment)
    server = StandaloneServer(f"http://127.0.0.1:{port}", process, unique_name)

    def ready() -> bool:
        try:
            return requests.get(server.url + "/_ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        server.wait(ready, 60, "the standalone server to be ready")
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
