"""INGESTION_PROCESSES=2: the real server routes one Celery queue over two ingestion processes.

One person's events are stored in the order they were queued; a SIGKILL of an
ingestion process or of the main process (the router) mid-stream loses
nothing and stores nothing twice; SIGTERM stops every process with exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from plugin_server.events import Delivery
from plugin_server.ingestion.decode import decode
from plugin_server.ingestion.router import route_key, slice_of, slice_queue
from plugin_server.models import Event, Team
from tests.e2e.test_server_e2e import team  # noqa: F401 -- the fixture: a team with a process_event plugin
from tests.ingestion.celery_tasks import celery_app, send_event_task, task_args
from tests.manage_process import ServerProcesses, manage_environment, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

PERSONS = 12


@pytest.fixture
def start_server(unique_name: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    servers = ServerProcesses()

    def start(**env: str) -> subprocess.Popen[bytes]:
        overrides = {
            "PLUGINS_CELERY_QUEUE": unique_name,
            "PLUGINS_RELOAD_PUBSUB_CHANNEL": f"{unique_name}-reload",
            "INGESTION_PROCESSES": "2",
            "WORKER_CONCURRENCY": "1",
            "CELERY_CONSUMER_HEARTBEAT_TTL": "2",
            "INGESTION_POLL_TIMEOUT": "0.2",
            "INGESTION_BATCH_SIZE": "50",
            "DISABLE_WEB": "true",
            "LOG_LEVEL": "warn",
        }
        return servers.start(manage_environment(**{**overrides, **env}))

    yield start
    for pid in _all_descendants(servers):
        _kill(pid)
    servers.kill_all()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


def _all_descendants(servers: ServerProcesses) -> list[int]:
    return [pid for server in servers.started for pid in descendants(server.pid)]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    """Running (a zombie, which a reaper has not collected yet, is not)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children...)."""
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def ingestion_index(pid: int) -> int | None:
    """The index of an ingestion process (it names itself ``ingestion-<i>``), None for any other process."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return int(name.split("-", 1)[1]) if name.startswith("ingestion-") and name.split("-", 1)[1].isdigit() else None


def ingestion_processes(server: subprocess.Popen[bytes]) -> list[int]:
    """The server's live ingestion processes (forked from its template, or fresh interpreters), by index."""
    found = [(index, pid) for pid in descendants(server.pid) if (index := ingestion_index(pid)) is not None and _alive(pid)]
    return [pid for _index, pid in sorted(found)]


def in_flight(redis_client: redis.Redis, queue: str, pid: int) -> int:
    """How many messages the ingestion process ``pid`` holds taken and not acknowledged (its slice's in-flight hashes:
    the process is the slice's only consumer)."""
    index = ingestion_index(pid)
    assert index is not None
    keys = cast(list[bytes], redis_client.keys(f"@posthog-plugin-server/celery/{slice_queue(queue, index)}/inflight/*"))
    return sum(cast(int, redis_client.hlen(key)) for key in keys)


def send_sequences(queue: str, team: Team, per_person: int) -> None:
    """``per_person`` events for each of PERSONS people, interleaved, each carrying its rank."""
    with celery_app() as app:
        for rank in range(per_person):
            for person in range(PERSONS):
                data = {"event": "ordered", "properties": {"rank": rank}}
                send_event_task(app, queue, task_args(data, distinct_id=f"person-{person}", team_id=team.id))


def stored(team: Team) -> int:
    return Event.objects.filter(team=team).count()


def assert_each_once(team: Team, per_person: int) -> None:
    rows = list(Event.objects.filter(team=team).values_list("distinct_id", "properties__rank"))
    assert len(rows) == PERSONS * per_person
    assert len(set(rows)) == len(rows), "an event was stored twice"


def assert_in_queue_order(team: Team) -> None:
    """Ordered by posthog_event.id (the order rows were written), each person's ranks rise."""
    ranks: dict[str, list[int]] = {}
    for distinct_id, rank in Event.objects.filter(team=team).order_by("id").values_list("distinct_id", "properties__rank"):
        ranks.setdefault(distinct_id, []).append(rank)
    for distinct_id, seen in ranks.items():
        assert seen == sorted(seen), f"{distinct_id}'s events were stored out of order"


def test_route_key_is_what_the_full_decode_reads(team: Team, unique_name: str, redis_client: redis.Redis) -> None:
    """The router's cheap read agrees with the ingestion's decode on (team_id, distinct_id)."""
    with celery_app() as app:
        send_event_task(app, unique_name, task_args({"event": "a"}, distinct_id=3.0, team_id=team.id))
        send_event_task(app, unique_name, task_args({"event": "b", "distinct_id": "over"}, distinct_id="x", team_id=team.id))
    payloads = cast(list[bytes], redis_client.lrange(unique_name, 0, -1))
    for payload in reversed(payloads):
        event = decode(Delivery(payload=payload, token=0, queue=unique_name), 1 << 20)
        assert route_key(payload) == (str(event["team_id"]), event["distinct_id"])
        # An envelope whose body is not its first key is read whole.
        reordered = json.dumps(dict(reversed(list(json.loads(payload).items())))).encode()
        assert route_key(reordered) == route_key(payload)
    assert route_key(b"not json") is None
    assert {slice_of(team.id, f"person-{person}", 2) for person in range(PERSONS)} == {0, 1}


def test_two_processes_keep_each_persons_order_and_stop_with_exit_0(
    team: Team, unique_name: str, redis_client: redis.Redis, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    per_person = 60
    send_sequences(unique_name, team, per_person)
    server = start_server()
    wait_for(lambda: len(ingestion_processes(server)) == 2, 60, "two ingestion processes", server)
    children = ingestion_processes(server)
    wait_for(lambda: stored(team) >= PERSONS * per_person, 120, "every event stored", server)
    assert_each_once(team, per_person)
    assert_in_queue_order(team)
    server.send_signal(signal.SIGTERM)
    assert server.wait(60) == 0
    assert not any(_alive(pid) for pid in children)
    assert redis_client.llen(unique_name) == 0


def test_sigkill_of_an_ingestion_process_loses_nothing_and_doubles_nothing(
    team: Team, unique_name: str, redis_client: redis.Redis, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    per_person = 150
    send_sequences(unique_name, team, per_person)
    # A heartbeat that outlives the test: only the main process's give-back, not its expiry,
    # can return the killed process's batch in time (and ahead of what came after it).
    server = start_server(CELERY_CONSUMER_HEARTBEAT_TTL="300")
    wait_for(lambda: len(ingestion_processes(server)) == 2, 60, "two ingestion processes", server)
    wait_for(lambda: stored(team) > 0, 60, "the first stored events", server)
    victim = ingestion_processes(server)[0]
    # Killed while it holds a batch taken and not acknowledged.
    wait_for(lambda: in_flight(redis_client, unique_name, victim) > 0, 30, "a batch in the victim's hands", server)
    os.kill(victim, signal.SIGKILL)
    assert stored(team) < PERSONS * per_person, "everything was stored before the kill; send more events"
    # The main process starts a new one in its place, which takes the slice over.
    wait_for(lambda: len([pid for pid in ingestion_processes(server) if pid != victim]) == 2, 60, "a replacement", server)
    wait_for(lambda: stored(team) >= PERSONS * per_person, 180, "every event stored", server)
    server.send_signal(signal.SIGTERM)
    assert server.wait(60) == 0
    assert_each_once(team, per_person)
    # The killed process's batch went back before its replacement took anything.
    assert_in_queue_order(team)


def test_sigkill_of_the_router_loses_nothing_and_doubles_nothing(
    team: Team, unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """The main process (the router) killed mid-stream: its ingestion processes stop on their own,
    a new server delivers the rest; every event stored once."""
    per_person = 150
    send_sequences(unique_name, team, per_person)
    first = start_server()
    wait_for(lambda: len(ingestion_processes(first)) == 2, 60, "two ingestion processes", first)
    orphans = ingestion_processes(first)
    wait_for(lambda: stored(team) > 0, 60, "the first stored events", first)
    first.kill()
    first.wait(10)
    assert stored(team) < PERSONS * per_person, "everything was stored before the kill; send more events"
    wait_for(lambda: not any(_alive(pid) for pid in orphans), 60, "the orphaned ingestion processes to stop")
    second = start_server()
    wait_for(lambda: stored(team) >= PERSONS * per_person, 180, "every event stored", second)
    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0
    assert_each_once(team, per_person)
