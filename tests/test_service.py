"""The supervised service base and the server's readiness built on it."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from django.test import override_settings

from plugin_server.metrics import SERVICE_CRASHED, RecordingMetrics, set_metrics
from plugin_server.service import Service, ServiceGroup, ServiceState


def wait_until(predicate: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


class Flaky(Service):
    """Crashes on its first ``crashes`` runs, then works until stopped."""

    name = "flaky"
    restart_backoff = 0.05

    def __init__(self, crashes: int) -> None:
        super().__init__()
        self.crashes = crashes
        self.runs: list[float] = []
        self.recovered = 0
        self.cleaned = 0

    def run(self) -> None:
        self.runs.append(time.monotonic())
        if len(self.runs) <= self.crashes:
            raise ValueError(f"boom {len(self.runs)}")
        while not self.sleep(0.01):
            pass

    def recover(self) -> None:
        self.recovered += 1

    def cleanup(self) -> None:
        self.cleaned += 1


def test_a_crashed_service_is_restarted_with_backoff_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    metrics = RecordingMetrics()
    set_metrics(metrics)
    service = Flaky(crashes=3)
    try:
        with caplog.at_level(logging.ERROR, logger="plugin_server.service"):
            service.start()
            wait_until(lambda: len(service.runs) == 4 and service.state is ServiceState.RUNNING)
        gaps = [later - earlier for earlier, later in zip(service.runs, service.runs[1:])]
        # 0.05, 0.1, 0.2 s: each wait at least the backoff, doubling.
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2
        assert service.restarts == 3 and service.recovered == 3
        assert service.last_error == "ValueError: boom 3"
        crashes = [record for record in caplog.records if "service flaky crashed" in record.getMessage()]
        assert len(crashes) == 3 and crashes[0].exc_info is not None
        assert metrics.total(SERVICE_CRASHED) == 3
        assert service.healthy()
        assert service.health() == {"state": "running", "restarts": 3, "last_error": "ValueError: boom 3"}
    finally:
        service.stop()
        set_metrics(None)
    assert service.state is ServiceState.STOPPED and service.cleaned == 1 and not service.is_alive()


def test_a_service_stopped_during_its_backoff_is_not_run_again() -> None:
    service = Flaky(crashes=100)
    service.restart_backoff = 30.0
    service.start()
    wait_until(lambda: service.state is ServiceState.RESTARTING)
    started = time.monotonic()
    service.stop()
    assert time.monotonic() - started < 5
    assert len(service.runs) == 1 and not service.healthy()


def test_a_group_stops_in_its_order_children_after_their_parent() -> None:
    stopped: list[str] = []

    class Part(Service):
        def __init__(self, name: str, kids: tuple[Service, ...] = ()) -> None:
            super().__init__(name)
            self.kids = kids

        def children(self) -> tuple[Service, ...]:
            return self.kids

        def run(self) -> None:
            while not self.sleep(0.01):
                pass

        def cleanup(self) -> None:
            stopped.append(self.name)

    group = ServiceGroup(stop_order=("b", "a"))
    for part in (Part("a", (Part("a-lock"),)), Part("b"), Part("c"), Part("d")):
        group.add(part)
    assert set(group.health()) == {"a", "a-lock", "b", "c", "d"}
    assert group.healthy()
    group.stop_all()
    assert stopped == ["b", "a", "a-lock", "d", "c"]


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


COMMON = {"slow operation watch", "progress", "plugin health"}
EXPECTED = {
    "ingestion": {"worker pool", "plugin-lane-0", "plugin log writer", "web", "consumer", "celery heartbeat", "export lane",
                  "export-0", "reload listener", "status"},
    "scheduler": {"worker pool", "plugin-lane-0", "plugin log writer", "web", "scheduler", "lock plugin-server:locks:schedule",
                  "reload listener", "status"},
    "jobs": {"worker pool", "plugin-lane-0", "plugin log writer", "web", "job consumer",
             "lock plugin-server:locks:job-queue-consumer", "reload listener", "status"},
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.redis
@pytest.mark.parametrize("mode", ["ingestion", "scheduler", "jobs", "all"])
def test_ready_reports_every_service_in_every_role(mode: str, unique_name: str) -> None:
    """/_ready lists each service's state in each role; a crashed service makes it 503 until restarted."""
    from plugin_server.server import Server, ServerOptions
    from plugin_server.workers.pool import PoolSettings, WorkerPool

    options = ServerOptions(kafka_enabled=False, disable_web=False, web_hostname="127.0.0.1", web_port=0,
                            shutdown_timeout=30, job_queues="graphile", mode=mode)
    with override_settings(PLUGINS_CELERY_QUEUE=unique_name, PLUGINS_RELOAD_PUBSUB_CHANNEL=unique_name, INGESTION_POLL_TIMEOUT=0.1):
        server = Server(options, pool_factory=lambda: WorkerPool(PoolSettings.from_config(concurrency=1)))
        server.start()
        try:
            assert server.web is not None
            url = f"http://127.0.0.1:{server.web.port}/_ready"
            status, body = _get(url)
            expected = COMMON.union(*EXPECTED.values()) if mode == "all" else COMMON | EXPECTED[mode]
            assert status == 200 and body["status"] == "ready" and body["mode"] == mode
            assert set(body["services"]) == expected
            assert all(report["state"] == "running" for report in body["services"].values())

            # The status heartbeat's thread crashes once: 503 while it waits to restart, 200 after.
            status_service = server.services.get("status")
            assert status_service is not None
            status_service.restart_backoff = 1.0
            broken = threading.Event()
            beat = status_service.beat  # type: ignore[attr-defined]

            def crash_once() -> None:
                if not broken.is_set():
                    broken.set()
                    raise RuntimeError("redis went away")
                beat()

            status_service._interval = 0.05  # type: ignore[attr-defined]
            status_service.beat = crash_once  # type: ignore[attr-defined]
            wait_until(lambda: status_service.state is ServiceState.RESTARTING)
            status, body = _get(url)
            assert status == 503 and body["services"]["status"]["state"] == "restarting"
            assert body["services"]["status"]["last_error"] == "RuntimeError: redis went away"
            wait_until(lambda: _get(url)[0] == 200)
            assert _get(url)[1]["services"]["status"]["restarts"] == 1
            every = list(server.services.all_services())
        finally:
            server.shutdown()
    assert every and all(service.state is ServiceState.STOPPED for service in every)
