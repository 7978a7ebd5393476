"""Worker process isolation, checked from outside through /proc (needs root, as in production containers)."""

from __future__ import annotations

import os
import resource

import pytest

from plugin_server.workers.hardening import MAX_OPEN_FILES, MAX_WORKER_THREADS, WORKER_UID_BASE, worker_environment
from tests.factories import create_team

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the isolation layers need root (CAP_SYS_ADMIN)")


def _proc(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/{name}", encoding="utf-8", errors="replace") as handle:
        return handle.read()


def _limit(pid: int, title: str) -> str:
    line = next(line for line in _proc(pid, "limits").splitlines() if line.startswith(title))
    return line[len(title):].split()[0]


def test_worker_environment_keeps_no_secrets():
    """It starts workers with none of the parent's variables but locale and time zone."""
    parent = {"DATABASE_URL": "postgres://u:secret@db/posthog", "REDIS_URL": "redis://r", "SECRET_KEY": "k", "LANG": "C.UTF-8"}
    environment = worker_environment(parent)
    assert "DATABASE_URL" not in environment and "REDIS_URL" not in environment and "SECRET_KEY" not in environment
    assert environment["LANG"] == "C.UTF-8"


@needs_root
def test_worker_process_is_locked_down(make_pool, monkeypatch):
    """It runs each worker with no secrets in its environment, an empty root, no network,
    an unprivileged user, no new processes, few fds and the memory limit."""
    monkeypatch.setenv("DATABASE_URL_PROBE", "postgres://user:secret@db/posthog")
    pool = make_pool(concurrency=1, memory_limit_mb=256)
    worker = pool.team_worker(create_team().id)
    assert worker is not None and not worker.hardening["skipped"]
    pid = worker.pid
    environ = _proc(pid, "environ")
    assert "secret" not in environ and "DATABASE" not in environ and "REDIS" not in environ
    assert os.readlink(f"/proc/{pid}/root") == pool.empty_dir and os.listdir(pool.empty_dir) == []
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    uid_line = next(line for line in _proc(pid, "status").splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(WORKER_UID_BASE)] * 4
    assert "NoNewPrivs:\t1" in _proc(pid, "status")
    assert _limit(pid, "Max data size") == str(256 * 1024 * 1024)
    assert _limit(pid, "Max processes") == str(MAX_WORKER_THREADS)
    assert _limit(pid, "Max file size") == "0"
    assert _limit(pid, "Max open files") == str(MAX_OPEN_FILES)
    assert len(os.listdir(f"/proc/{pid}/fd")) <= 6
    assert "manage.py" not in _proc(pid, "cmdline")
    # The main process keeps its own limits: the worker set them on itself.
    assert resource.getrlimit(resource.RLIMIT_NPROC)[0] != 0
    # The zygote it was forked from: no secrets, empty root, no network (it stays root to give out users).
    zygote = pool.zygote().process.pid
    assert "secret" not in _proc(zygote, "environ") and "DATABASE" not in _proc(zygote, "environ")
    assert os.readlink(f"/proc/{zygote}/root") == pool.empty_dir
    namespaces = {os.readlink(f"/proc/{process}/ns/net") for process in (zygote, pid, os.getpid())}
    assert len(namespaces) == 3  # the worker's network namespace is its own, the zygote's is not the host's
    assert len(os.listdir(f"/proc/{zygote}/fd")) <= 5


@needs_root
def test_workers_run_as_different_users(make_pool):
    """Each team's worker has a user and a network namespace of its own, so one cannot signal, trace or reach another."""
    pool = make_pool(concurrency=2)
    uids = set()
    workers = (pool.team_worker(create_team().id), pool.team_worker(create_team().id))
    assert os.readlink(f"/proc/{workers[0].pid}/ns/net") != os.readlink(f"/proc/{workers[1].pid}/ns/net")
    for worker in workers:
        line = next(line for line in _proc(worker.pid, "status").splitlines() if line.startswith("Uid:"))
        uids.add(int(line.split()[1]))
    assert len(uids) == 2 and 0 not in uids
