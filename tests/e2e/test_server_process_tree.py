"""The server's processes: who forks whom, and that nothing outlives a kill -9 of the main process.

With INGESTION_PROCESSES=2 the ingestion processes are forked from the
template (the main process's child), a killed one's replacement from the
same template, and their team workers from the main process's one zygote.
A kill -9 of the main process leaves no process of the server running a
few seconds later (template, ingestion processes, zygote, team workers),
with one ingestion process or two. A killed template's ingestion processes
stop and are replaced by fresh interpreters, which go on ingesting. Each
forked process has a server instance id of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from plugin_server.models import PluginLogEntry, Team
from tests.e2e.test_ingestion_processes import (  # noqa: F401 -- start_server is a fixture
    PERSONS,
    _alive,
    _children,
    descendants,
    ingestion_processes,
    send_sequences,
    start_server,
    stored,
)
from tests.e2e.test_server_e2e import team  # noqa: F401 -- the fixture: a team with a process_event plugin
from tests.manage_process import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _zygotes(root: int) -> list[int]:
    """The plugin zygotes below ``root`` (their team workers, forked from them, share their command line)."""
    found = []
    for pid in descendants(root):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"plugin_server.workers.zygote" in command and _alive(pid):
            found.append(pid)
    return [pid for pid in found if _parent(pid) not in found]


def _live(pids: list[int]) -> list[int]:
    return [pid for pid in pids if _alive(pid)]


@pytest.mark.parametrize("processes", ["1", "2"])
def test_kill_9_of_the_main_process_leaves_no_server_process(
    processes: str, team: Team, unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    send_sequences(unique_name, team, 5)
    server = start_server(INGESTION_PROCESSES=processes)
    wait_for(lambda: stored(team) >= PERSONS * 5, 120, "every event stored", server)
    tree = descendants(server.pid)
    zygotes = _zygotes(server.pid)
    assert len(zygotes) == 1, "one plugin zygote for the whole server"
    workers = [pid for pid in tree if _parent(pid) == zygotes[0]]
    assert workers, "the team's worker"
    if processes == "2":
        assert len(ingestion_processes(server)) == 2
    server.kill()
    server.wait(10)
    wait_for(lambda: not _live(tree), 15, f"every server process gone (left: {_live(tree)})")


def test_ingestion_processes_are_forked_from_the_template_and_so_is_a_killed_ones_replacement(
    team: Team, unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    send_sequences(unique_name, team, 5)
    server = start_server()
    wait_for(lambda: len(ingestion_processes(server)) == 2, 60, "two ingestion processes", server)
    templates = [pid for pid in _children(server.pid) if _name(pid) == "ingest-template"]
    assert len(templates) == 1
    template = templates[0]
    first, second = ingestion_processes(server)
    assert _parent(first) == _parent(second) == template
    wait_for(lambda: stored(team) >= PERSONS * 5, 120, "every event stored", server)
    # Each forked process has a server instance id of its own (in its plugin log lines).
    loads = PluginLogEntry.objects.filter(team_id=team.id, source="SYSTEM", message__startswith="Plugin loaded")
    wait_for(lambda: loads.values("instance_id").distinct().count() == 2, 30, "a load logged by each process", server)
    zygote = _zygotes(server.pid)
    assert len(zygote) == 1 and _parent(zygote[0]) == server.pid
    victims_workers = [pid for pid in _children(zygote[0]) if _alive(pid)]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: len([pid for pid in ingestion_processes(server) if pid != first]) == 2, 60, "a replacement", server)
    replacement = next(pid for pid in ingestion_processes(server) if pid not in (first, second))
    assert _parent(replacement) == template
    # The killed process's team workers went with it; the other process's did not.
    survivors = [pid for pid in victims_workers if _alive(pid)]
    assert len(survivors) < len(victims_workers)
    send_sequences(unique_name, team, 5)
    wait_for(lambda: stored(team) >= PERSONS * 10, 120, "the next events stored", server)
    server.send_signal(signal.SIGTERM)
    assert server.wait(60) == 0
    assert not _alive(template)


def test_a_killed_template_is_replaced_by_fresh_interpreters_that_go_on_ingesting(
    team: Team, unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    server = start_server()
    wait_for(lambda: len(ingestion_processes(server)) == 2, 60, "two ingestion processes", server)
    template = next(pid for pid in _children(server.pid) if _name(pid) == "ingest-template")
    orphans = ingestion_processes(server)
    os.kill(template, signal.SIGKILL)
    wait_for(lambda: not _live(orphans), 30, "the template's ingestion processes to stop")
    wait_for(
        lambda: len(ingestion_processes(server)) == 2 and all(_parent(pid) == server.pid for pid in ingestion_processes(server)),
        60, "two fresh ingestion processes", server,
    )
    send_sequences(unique_name, team, 5)
    wait_for(lambda: stored(team) >= PERSONS * 5, 120, "every event stored", server)
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    assert server.wait(60) == 0
    assert time.monotonic() - started < 30
