"""Fixtures of the capture tests: a team with a token, a queue of the test's own, a fresh token
cache, and the standalone server (run_plugin_server with CAPTURE_ENABLED) the real SDKs talk to."""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from django.test import override_settings

from plugin_server.capture.queue import close_queues
from plugin_server.capture.views import team_cache
from plugin_server.config import get_config
from plugin_server.events import Delivery, PluginEvent
from plugin_server.ingestion.decode import decode
from plugin_server.models import Team
from tests.e2e.test_server_e2e import start_server  # noqa: F401  (a fixture)
from tests.manage_process import wait_for
from tests.factories import create_team


@pytest.fixture(autouse=True)
def _fresh_team_cache() -> Iterator[None]:
    # Tokens repeat across tests (each test's rows are rolled back): forget them. And close the
    # test's queue connections (a producer on an unreachable broker would retry for ever).
    team_cache().clear()
    yield
    team_cache().clear()
    close_queues()


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

    def wait(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        wait_for(predicate, seconds, what, self.process)


@pytest.fixture
def standalone_server(start_server: Callable[..., subprocess.Popen[bytes]]) -> Iterator[StandaloneServer]:
    """``./manage.py run_plugin_server`` with CAPTURE_ENABLED on a free port of 127.0.0.1, on the test
    database and this test's queue: the README's one-command standalone server."""
    port = free_port()
    process = start_server(CAPTURE_ENABLED="true", DISABLE_WEB="false", WEB_HOSTNAME="127.0.0.1", WEB_PORT=str(port))
    server = StandaloneServer(f"http://127.0.0.1:{port}", process)

    def ready() -> bool:
        try:
            return requests.get(server.url + "/_ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    server.wait(ready, 60, "the standalone server to be ready")
    yield server
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


class OwnRedis:
    """A redis-server of the test's own (no persistence) on a free port: its statistics and
    its death concern this test only."""

    def __init__(self, directory: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self._directory]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)

        def answers() -> bool:
            try:
                return bool(self.client().ping())
            except redis.ConnectionError:
                return False

        wait_for(answers, 10, "redis-server to answer", self.process)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(str(tmp_path))
    server.start()
    yield server
    server.kill()
