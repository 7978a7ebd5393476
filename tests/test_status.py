"""The Redis ping key, `./manage.py healthcheck` and the health/readiness endpoints."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import pytest
import redis
from django.core.management import call_command

from plugin_server import __version__
from plugin_server.status import JOB_QUEUES_KEY, PING_KEY, VERSION_KEY, StatusHeartbeat, read_ping
from plugin_server.web import HealthServer

pytestmark = pytest.mark.redis


def test_heartbeat_writes_ping_version_and_job_queues(redis_client: redis.Redis) -> None:
    """start() writes the ping (TTL ≤ 60 s), the version and the JSON-encoded job queue types."""
    redis_client.delete(PING_KEY)
    heartbeat = StatusHeartbeat(job_queues="graphile", interval=60)
    heartbeat.start()
    try:
        assert read_ping() is not None
        assert 0 < redis_client.ttl(PING_KEY) <= 60
        assert redis_client.get(VERSION_KEY) == __version__.encode()
        assert redis_client.get(JOB_QUEUES_KEY) == b'"graphile"'
    finally:
        heartbeat.stop()


def test_healthcheck_exits_0_with_a_ping_and_1_without(redis_client: redis.Redis) -> None:
    """healthcheck prints the ping time when the key exists, exits 1 when it is gone."""
    StatusHeartbeat().beat()
    out = io.StringIO()
    call_command("healthcheck", stdout=out)
    assert "alive" in out.getvalue()
    redis_client.delete(PING_KEY)
    with pytest.raises(SystemExit) as exited:
        call_command("healthcheck", stdout=io.StringIO(), stderr=io.StringIO())
    assert exited.value.code == 1


def get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_is_200_and_ready_follows_the_server() -> None:
    """/_health answers 200; /_ready answers 200 or 503 as the server's ready() says."""
    state = {"ready": True}
    web = HealthServer("127.0.0.1", 0, lambda: state["ready"])
    web.start()
    try:
        base = f"http://127.0.0.1:{web.port}"
        assert get(base + "/_health") == (200, {"status": "ok"})
        assert get(base + "/_ready")[0] == 200
        state["ready"] = False
        assert get(base + "/_ready")[0] == 503
        assert get(base + "/nope")[0] == 404
    finally:
        web.stop()
