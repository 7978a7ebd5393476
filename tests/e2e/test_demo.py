"""``bin/demo`` and ``bin/shell`` as a newcomer runs them: start, send a first event, Ctrl-C.

bin/demo runs here on the test database and a Redis of its own (a free port,
so that the Redis it starts is one it must stop), with Kafka off: it must not
touch Kafka or ClickHouse, must store an event sent through ``bin/shell``,
and on Ctrl-C (SIGINT to its process group, as a terminal sends it) must stop
the server gracefully and then the Redis it started, leaving Postgres, which
was already running, alone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.factories import create_team
from plugin_server.models import Event
from tests.manage_process import ROOT, manage_environment, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Generous: the machine running the tests is shared (the figure measured is in the README).
SHUTDOWN_LIMIT = 15.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=1).ping())
    except redis.ConnectionError:
        return False


def test_bin_demo_runs_only_what_it_needs_takes_a_first_event_and_stops_what_it_started_on_ctrl_c(
    tmp_path: Path, unique_name: str
) -> None:
    """Only Postgres and Redis; an event sent with bin/shell is stored, and one sent with PostHog's SDK to its
    capture API; Ctrl-C: exit 0, its Redis stopped, Postgres kept."""
    create_team()  # a team already there: setup_demo adds the demo team beside it
    port = _free_port()
    environment = manage_environment(
        SERVICES_DIR=str(tmp_path / "services"),
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        PLUGINS_CELERY_QUEUE=unique_name,
        PLUGINS_RELOAD_PUBSUB_CHANNEL=f"{unique_name}-reload",
        KAFKA_ENABLED="false",
        KAFKA_HOSTS="127.0.0.1:1",  # nothing there: touching it would fail or start a broker
        WORKER_CONCURRENCY="1",
        WEB_PORT=str(_free_port()),  # bin/demo serves the capture API; never on a port another run holds
    )
    environment.pop("SECRET_KEY", None)
    demo = subprocess.Popen(
        [str(ROOT / "bin" / "demo")], cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    output: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 240
        for line in demo.stdout:
            output.append(line)
            if "All systems go" in line or time.monotonic() > deadline:
                break
        assert "All systems go" in "".join(output), "".join(output)
        assert _answers(port), "bin/demo should have started a Redis on REDIS_URL's port"
        sent = subprocess.run(
            [str(ROOT / "bin" / "shell"), "./manage.py", "send_test_events", "--wait", "60"],
            cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "Stored: $pageview for test-user" in sent.stdout and '"greeting": "Hello from the demo plugin"' in sent.stdout
        # No built-in development key in a demo: no W001 warning.
        assert "plugin_server.W001" not in sent.stderr
        # PostHog's SDK to the capture API bin/demo serves (the README's first event).
        sdk = f"from posthog import Posthog\nPosthog('phc_demo_plugin_server_token', host='http://127.0.0.1:{environment['WEB_PORT']}', sync_mode=True, max_retries=0).capture('first event', distinct_id='newcomer')"
        sdk_run = subprocess.run([str(ROOT / "bin" / "shell"), "python", "-c", sdk], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
        assert sdk_run.returncode == 0 and "Error" not in sdk_run.stderr, sdk_run.stdout + sdk_run.stderr
        wait_for(lambda: Event.objects.filter(event="first event", distinct_id="newcomer").exists(), 60, "the SDK's first event", demo)

        interrupted = time.monotonic()
        os.killpg(demo.pid, signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
        took = time.monotonic() - interrupted
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
    text = "".join(output) + rest
    assert demo.returncode == 0, text
    assert took < SHUTDOWN_LIMIT, f"Ctrl-C took {took:.1f}s"
    assert "plugin server stopped" in rest
    assert "bin/demo: stopping the services it started: redis" in rest
    assert not _answers(port), "the Redis bin/demo started is still running"
    assert "postgres: stopping" not in rest  # it was already running: left alone
    # Kafka is off: no broker or ClickHouse was looked for or started.
    assert "kafka:" not in text and "clickhouse:" not in text, text
    assert not (tmp_path / "services" / "tansu.pid").exists() and not (tmp_path / "services" / "clickhouse.pid").exists()
    assert "Traceback" not in text, text
