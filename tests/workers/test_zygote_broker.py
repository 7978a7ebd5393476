"""One zygote for the server: a pool that forks its team workers through the main pool's broker.

Real zygote and team workers: the main pool shares its zygote (started only
when a worker is first needed), a second pool reaches it through its own
control socket, as an ingestion process does; closing that socket (what the
kernel does when the process is killed) kills the workers forked for it;
answers are matched by request id; a dead zygote is replaced for everyone.
The zygote keeps none of the V8 library pages it read at load time.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from plugin_server.workers.hardening import WORKER_UID_BASE
from plugin_server.workers.pool import PoolSettings, WorkerPool
from plugin_server.workers.zygote_broker import UIDS_PER_PROCESS, ZygoteBroker
from tests.workers.helpers import event, install, team_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

RENAME = "def process_event(event, meta):\n    event['event'] = 'renamed'\n    return event\n"
SETTINGS: dict[str, Any] = {"concurrency": 1, "task_timeout": 2.0, "memory_limit_mb": 512, "grace": 1.0}


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text():
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def shared() -> Iterator[tuple[WorkerPool, ZygoteBroker, Callable[..., WorkerPool]]]:
    """The main pool with its broker, and a maker of pools connected to it (stopped at the end, clients first)."""
    main = WorkerPool(PoolSettings.from_config(**SETTINGS))
    broker = main.share_zygote()
    main.start()
    clients: list[WorkerPool] = []

    def connect(index: int = 0) -> WorkerPool:
        control = broker.connect(f"test-{index}")
        pool = WorkerPool(PoolSettings.from_config(**SETTINGS), zygote_fd=control.detach(), uid_offset=(index + 1) * UIDS_PER_PROCESS)
        pool.start()
        clients.append(pool)
        return pool

    yield main, broker, connect
    for pool in clients:
        pool.stop()
    main.stop()


def test_the_main_pool_starts_no_zygote_until_a_worker_is_needed_and_clients_fork_from_it(shared):
    main, broker, connect = shared
    config = install(RENAME)
    assert main._zygote is None
    first, second = connect(0), connect(1)
    assert main._zygote is None  # connecting costs no zygote either
    assert first.process_events([event(team_of(config))])[0]["event"] == "renamed"
    assert second.process_events([event(team_of(config))])[0]["event"] == "renamed"
    zygote = main.zygote()
    workers = first.workers() + second.workers()
    assert len(workers) == 2 and all(worker is not None and _ppid(worker.pid) == zygote.pid() for worker in workers)
    assert broker.owners() == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to a worker user needs root")
def test_the_workers_of_each_client_run_as_users_of_its_own_range(shared):
    _main, _broker, connect = shared
    config = install(RENAME)
    pool = connect(1)
    worker = pool.team_worker(team_of(config))
    assert worker is not None
    uid_line = next(line for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [str(WORKER_UID_BASE + 2 * UIDS_PER_PROCESS)] * 4


def test_a_closed_control_socket_kills_the_workers_forked_for_it_and_only_those(shared):
    """What happens when an ingestion process is killed: its end of the socket closes."""
    _main, broker, connect = shared
    config = install(RENAME)
    doomed, kept = connect(0), connect(1)
    doomed_worker, kept_worker = doomed.team_worker(team_of(config)), kept.team_worker(team_of(config))
    assert doomed_worker is not None and kept_worker is not None
    assert doomed._client is not None
    doomed._client.close()
    assert _gone(doomed_worker.pid)
    assert not _gone(kept_worker.pid, 0.5)
    assert kept.process_events([event(team_of(config))])[0]["event"] == "renamed"
    assert broker.owners() == 1


def test_an_answer_to_an_earlier_request_is_not_taken_for_the_current_one(shared):
    _main, broker, _connect = shared
    control = broker.connect("raw")
    try:
        # An earlier request left unanswered on our side (as after a timeout): its answer is in the socket.
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
        socket.send_fds(control, [json.dumps({"id": 7, "uid": WORKER_UID_BASE, "memory_mb": 256}).encode()], fds)
        for fd in fds:
            os.close(fd)
        from plugin_server.workers.zygote_broker import ZygoteClient

        client = ZygoteClient(os.dup(control.fileno()))
        pipes = [os.pipe() for _ in range(3)]
        theirs = (pipes[0][0], pipes[1][1], pipes[2][1])
        pid, zygote = client.spawn(theirs, WORKER_UID_BASE, 256)
        assert client._next_id == 1 and zygote.alive() and pid > 0
        client.close()
        for read, write in pipes:
            os.close(read)
            os.close(write)
    finally:
        control.close()


def test_a_dead_zygote_is_replaced_for_every_client_and_blames_no_plugin(shared):
    main, _broker, connect = shared
    config = install(RENAME)
    pool = connect(0)
    assert pool.process_events([event(team_of(config))])[0]["event"] == "renamed"
    worker = pool.workers()[0]
    assert worker is not None and worker.zygote.alive()
    old = main.zygote()
    old.process.kill()
    old.process.wait()
    assert not worker.zygote.alive()
    assert pool.process_events([event(team_of(config))])[0]["event"] == "renamed"
    assert main.zygote() is not old and main.zygote().alive()
    config.refresh_from_db()
    assert config.error is None and config.enabled


def _library_rss_kb(pid: int, library: str) -> int:
    total, counting = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            counting = len(fields) >= 6 and fields[5].endswith(library)
        elif counting and fields[:1] == ["Rss:"]:
            total += int(fields[1])
    return total


def test_the_zygote_keeps_none_of_the_v8_library_pages_it_read_and_javascript_still_runs(make_pool):
    """Loading V8 reads some 25 MB of its library: the zygote drops them (read-only, so nothing of its own);
    a worker maps back the pages it runs, from the page cache."""
    from plugin_server.workers.zygote import V8_LIBRARY
    from tests.workers.test_js_plugins import TS_HELLO, install_js

    config = install_js(TS_HELLO, config={"greeting": "hi"})
    pool = make_pool(concurrency=1)
    out = pool.process_events([event(team_of(config))])
    assert out[0]["properties"]["greeting"] == "hi"
    assert _library_rss_kb(pool.zygote().pid(), V8_LIBRARY) < 4 * 1024
