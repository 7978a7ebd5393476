"""`./manage.py run_plugin_server` as a subprocess, fed by a real Celery producer.

Every event sent is stored (through a plugin), a SIGTERM stops the server
cleanly with exit 0, and after a SIGKILL mid-stream a restarted server stores
the rest: every event once, none twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection

from plugin_server.models import DeadLetter, Event, Team
from tests.factories import create_plugin, create_plugin_config, create_team
from tests.ingestion.celery_tasks import celery_app, send_event_task, task_args
from tests.manage_process import ServerProcesses, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = """
def process_event(event, meta):
    event["properties"]["processed"] = "hell yes"
    return event
"""


@pytest.fixture
def team() -> Team:
    team = create_team()
    create_plugin_config(team=team, plugin=create_plugin(organization=team.organization, source=PLUGIN))
    return team


@pytest.fixture
def start_server(unique_name: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts servers on the test database and this test's queue; kills leftovers at the end."""
    servers = ServerProcesses()
    db = connection.settings_dict

    def start(**env: str) -> subprocess.Popen[bytes]:
        environment = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "settings.base",
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}",
            "REDIS_URL": settings.REDIS_URL,
            "PLUGINS_CELERY_QUEUE": unique_name,
            "PLUGINS_RELOAD_PUBSUB_CHANNEL": f"{unique_name}-reload",
            "WORKER_CONCURRENCY": "1",
            "CELERY_CONSUMER_HEARTBEAT_TTL": "2",
            "INGESTION_POLL_TIMEOUT": "0.2",
            "INGESTION_BATCH_SIZE": "100",
            "DISABLE_WEB": "true",
            "LOG_LEVEL": "warn",
            **env,
        }
        return servers.start(environment)

    yield start
    servers.kill_all()


def send_events(queue: str, team: Team, count: int, prefix: str = "user") -> None:
    with celery_app() as app:
        for index in range(count):
            send_event_task(app, queue, task_args({"event": "e2e", "properties": {"n": index}}, distinct_id=f"{prefix}-{index}", team_id=team.id))


def stored(team: Team) -> int:
    return Event.objects.filter(team=team).count()


def test_events_go_through_a_plugin_into_postgres_and_sigterm_exits_0(
    team: Team, unique_name: str, redis_client: redis.Redis, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """With 2 workers: events sent with Celery are processed by the plugin and stored; bad messages are
    dead-lettered; the healthcheck passes; SIGTERM → exit 0 (acceptance "Server": starts and stops cleanly)."""
    server = start_server(WORKER_CONCURRENCY="2")
    send_events(unique_name, team, 50)
    redis_client.lpush(unique_name, b"not a celery message")
    wait_for(lambda: stored(team) == 50, 60, "50 stored events", server)
    wait_for(lambda: DeadLetter.objects.filter(queue=unique_name, reason="bad_envelope").exists(), 10, "the dead letter", server)
    assert set(Event.objects.filter(team=team).values_list("properties__processed", flat=True)) == {"hell yes"}
    health = subprocess.run([sys.executable, "manage.py", "healthcheck"], cwd=ROOT, capture_output=True, env={**os.environ, "DJANGO_SETTINGS_MODULE": "settings.base", "REDIS_URL": settings.REDIS_URL})
    assert health.returncode == 0, health.stderr
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert redis_client.llen(unique_name) == 0


def test_after_a_sigkill_mid_stream_every_event_is_stored_once(
    team: Team, unique_name: str, redis_client: redis.Redis, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """SIGKILL while events flow, restart: all N events are in posthog_event, each exactly once."""
    total = 1500
    send_events(unique_name, team, total)
    first = start_server()
    wait_for(lambda: stored(team) > 0, 60, "the first stored events", first)
    first.kill()
    first.wait(10)
    assert stored(team) < total, "the server finished before it could be killed; send more events"
    second = start_server()
    wait_for(lambda: stored(team) >= total, 120, f"{total} stored events", second)
    # Give a double store the time to show up before counting.
    wait_for(lambda: redis_client.llen(unique_name) == 0, 10, "an empty queue", second)
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert stored(team) == total
    distinct_ids = Event.objects.filter(team=team).values_list("distinct_id", flat=True)
    assert len(set(distinct_ids)) == total


def test_two_servers_on_one_queue_store_every_event_once(
    team: Team, unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """Two servers consuming the same queue (scale-out) store every event exactly once, then both stop with exit 0."""
    total = 600
    servers = [start_server(), start_server()]
    send_events(unique_name, team, total, prefix="shared")
    wait_for(lambda: stored(team) >= total, 120, f"{total} stored events", servers[0])
    for server in servers:
        server.send_signal(signal.SIGTERM)
    assert [server.wait(30) for server in servers] == [0, 0]
    assert stored(team) == total
    assert len(set(Event.objects.filter(team=team).values_list("distinct_id", flat=True))) == total
