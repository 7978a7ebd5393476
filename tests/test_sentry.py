"""Sentry from the main process (a subprocess, so the SDK's global state stays out of the test run)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.sentry_collector import sentry_collector

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = textwrap.dedent(
    """
    import logging, sys
    import django
    django.setup()
    from plugin_server import sentry
    from plugin_server.service import Service

    assert sentry.init_sentry(sys.argv[1], "test")
    try:
        raise ConnectionError("postgres went away")
    except ConnectionError:
        logging.getLogger("plugin_server.ingestion.consumer").exception(
            "the consumer loop failed", extra={"team_id": 5, "source": "celery"})

    class Crashing(Service):
        name = "scheduler"
        restart_backoff = 30.0
        def run(self):
            raise RuntimeError("tick exploded")

    service = Crashing()
    service.start()
    while service.restarts == 0:
        pass
    service.stop()
    assert sentry.report_plugin_error(2, "geoip", 60, 39, "TypeError", "bad", "Traceback ...")
    assert not sentry.report_plugin_error(2, "geoip", 60, 39, "TypeError", "bad", "Traceback ...")  # throttled
    sentry.flush()
    """
)


def test_server_errors_and_crashed_services_reach_sentry_with_tags() -> None:
    with sentry_collector() as collector:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings.base", "LOG_LEVEL": "error"}
        done = subprocess.run([sys.executable, "-c", SCRIPT, collector.dsn], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while len(collector.events) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        consumer = collector.find("the consumer loop failed")
        assert consumer is not None, collector.messages()
        assert consumer["tags"]["team_id"] == "5" and consumer["tags"]["source"] == "celery"
        assert consumer["exception"]["values"][-1]["value"] == "postgres went away"
        crashed = collector.find("service scheduler crashed")
        assert crashed is not None and crashed["tags"]["service"] == "scheduler"
        assert crashed["exception"]["values"][-1]["type"] == "RuntimeError"
        plugin = collector.find("TypeError: bad")
        assert plugin is not None
        assert {key: plugin["tags"][key] for key in ("team", "plugin", "plugin_config")} == {"team": "2", "plugin": "geoip", "plugin_config": "39"}
        assert len([text for text in collector.messages() if text == "TypeError: bad"]) == 1
