#!/usr/bin/env python
"""End-to-end ingestion benchmark: Celery tasks in Redis → run_plugin_server → posthog_event.

For each INGESTION_PROCESSES × distinct-id count given: N
``process_event_with_plugins`` tasks (over D distinct ids, one team with
one simple ``process_event`` plugin) are written to a staging list (one
real Celery producer message is the template; each copy gets its own task
id and body, as Celery would write it); a fresh ``./manage.py
run_plugin_server`` is started and, once its ping key is in Redis and its
ingestion processes are up, the staging list is renamed onto its queue in
one step (no producer competes for the cores while timing) and the clock
starts. It stops when all N events are in ``posthog_event``.

Printed per run: events/s, the server's CPU ms per event (user + system of
the server process and all its descendants, i.e. ingestion processes and
plugin workers, measured from /proc over the timed part only), the peak
memory of all those processes together (sampled every 100 ms), as PSS (each
shared page counted once, split between its sharers: what the processes
cost the machine) and as RSS (each shared page counted in every process
that maps it, so forked processes are counted many times), and the CPU of
the server's own Postgres backends per event (from /proc; the database is
the benchmark's own).

With ``--latency`` each run is followed by a latency run on the same
server: events are pushed onto the queue at half the rate just measured
for ``--latency-seconds``, each carrying its enqueue time; the time until it
is seen in ``posthog_event`` (polled every 20 ms) gives p50/p95/p99.

Usage (from the repository root, services up)::

    .venv/bin/python benchmarks/ingest_celery.py [--events 50000] [--distinct-ids 1000 50000] [--processes 1 2 4] [--latency]

It uses its own database (``--database-url``, created and migrated if
missing) and a throw-away queue, so it can run beside the test suite.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = """
def process_event(event, meta):
    event["properties"]["benchmarked"] = True
    return event
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Result:
    processes: int
    concurrency: int
    distinct_ids: int
    events: int
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    peak_pss_bytes: int
    postgres_cpu_seconds: float
    redis_cpu_seconds: float
    latency: tuple[float, float, float] | None = None  # p50, p95, p99 seconds at half the rate

    def line(self) -> str:
        text = (
            f"INGESTION_PROCESSES={self.processes} WORKER_CONCURRENCY={self.concurrency} distinct ids={self.distinct_ids}: "
            f"{self.events} events in {self.seconds:.2f} s = "
            f"{self.events / self.seconds:,.0f} events/s; server CPU {self.cpu_seconds * 1000 / self.events:.3f} ms/event; "
            f"peak PSS {self.peak_pss_bytes / 2**20:.0f} MiB (RSS {self.peak_rss_bytes / 2**20:.0f} MiB); Postgres CPU {self.postgres_cpu_seconds * 1000 / self.events:.3f} ms/event; "
            f"Redis CPU {self.redis_cpu_seconds * 1000 / self.events:.3f} ms/event; "
            f"whole machine {(self.cpu_seconds + self.postgres_cpu_seconds + self.redis_cpu_seconds) * 1000 / self.events:.3f} ms/event"
        )
        if self.latency is not None:
            p50, p95, p99 = self.latency
            text += f"; latency at half rate p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
        return text


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU of each process (its own, not its reaped children's)."""
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return times


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
        except OSError:
            continue
    return total


# BENCH_PROFILE=gil: what holds the GIL (where the CPU goes); wall: every thread, waiting included (where the time goes).
PROFILE_FLAGS = {"gil": ["--gil"], "wall": ["--idle", "--threads"]}


def redis_cpu_seconds(client: Any) -> float:
    """The Redis server's own CPU so far (INFO cpu; the whole server, so the benchmark wants it to itself)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size of ``pids`` together: a page shared by k processes counts 1/k in each."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


def ensure_database(database_url: str) -> None:
    import psycopg

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    with psycopg.connect(
        host=parts.hostname, port=parts.port or 5432, user=parts.username or "postgres", dbname="postgres", autocommit=True
    ) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            admin.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)


def setup_django(database_url: str) -> None:
    """Django on the benchmark's own database (created and migrated if missing), from the repository root."""
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.base")
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379")
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    ensure_database(database_url)
    import django

    django.setup()


class TaskWriter:
    """Celery messages for the staging list, fast: one real producer message is the template.

    Celery's producer writes a few hundred messages a second on a loaded
    machine; the copies differ from what it would write only in task id and
    body (base64 of the JSON args), which is all the server reads."""

    def __init__(self, queue: str) -> None:
        from celery import Celery
        from django.conf import settings

        from plugin_server.redis_client import get_redis

        app = Celery("benchmark-producer", broker=settings.REDIS_URL)
        template_queue = f"{queue}-template"
        app.send_task("posthog.tasks.process_event.process_event_with_plugins", args=[], queue=template_queue)
        app.close()
        raw = cast(bytes | None, get_redis().rpop(template_queue))
        assert raw is not None, "the template message was not written"
        self.template = json.loads(raw)

    def message(self, args: list[object]) -> bytes:
        task_id = str(uuid.uuid4())
        body = base64.b64encode(json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode())
        envelope = {**self.template, "body": body.decode()}
        envelope["headers"] = {**self.template["headers"], "id": task_id, "root_id": task_id, "argsrepr": "", "kwargsrepr": "{}"}
        envelope["properties"] = {**self.template["properties"], "correlation_id": task_id, "delivery_tag": str(uuid.uuid4())}
        return json.dumps(envelope).encode()


def event_args(team_id: int, index: int, distinct_ids: int, now: str, **properties: object) -> list[object]:
    data = {"event": "$pageview", "properties": {"$current_url": "https://example.com/", "n": index, **properties}}
    return [f"user-{index % distinct_ids}", "127.0.0.1", "http://localhost", data, team_id, now, now]


def send_tasks(queue: str, team_id: int, events: int, distinct_ids: int) -> None:
    """``events`` tasks onto ``queue`` (LPUSH in chunks, oldest first, as a producer would)."""
    from plugin_server.redis_client import get_redis

    writer = TaskWriter(queue)
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    redis = get_redis()
    chunk: list[bytes] = []
    for index in range(events):
        chunk.append(writer.message(event_args(team_id, index, distinct_ids, now)))
        if len(chunk) == 1000 or index == events - 1:
            redis.lpush(queue, *chunk)
            chunk = []


LATENCY_TRIGGER = """
CREATE TABLE IF NOT EXISTS benchmark_stored (team_id integer, enqueued float8, stored float8);
CREATE OR REPLACE FUNCTION benchmark_note_stored() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO benchmark_stored VALUES (NEW.team_id, (NEW.properties->>'enqueued')::float8, extract(epoch FROM clock_timestamp()));
  RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS benchmark_note_stored ON posthog_event;
CREATE TRIGGER benchmark_note_stored AFTER INSERT ON posthog_event
  FOR EACH ROW WHEN (NEW.properties ? 'enqueued') EXECUTE PROCEDURE benchmark_note_stored();
"""


def measure_latency(queue: str, team_id: int, rate: float, seconds: float, distinct_ids: int) -> tuple[float, float, float]:
    """Push events at ``rate``/s for ``seconds``; p50/p95/p99 of enqueue → row written in posthog_event.

    The write time is taken by a row trigger (only on these events, in the
    benchmark's own database) inside the storing transaction: polling by id
    would miss rows that two processes commit out of id order."""
    from django.db import connection

    from plugin_server.redis_client import get_redis

    writer = TaskWriter(queue)
    redis = get_redis()
    with connection.cursor() as cursor:
        cursor.execute(LATENCY_TRIGGER)
    total = int(rate * seconds)
    started = time.monotonic()
    sent = 0
    while sent < total:
        due = min(total, int((time.monotonic() - started) * rate))
        if due > sent:
            stamp = time.time()
            iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(stamp))
            redis.lpush(queue, *[writer.message(event_args(team_id, index, distinct_ids, iso, enqueued=stamp)) for index in range(sent, due)])
            sent = due
        time.sleep(0.005)
    with connection.cursor() as cursor:
        while True:
            cursor.execute("SELECT count(*) FROM benchmark_stored WHERE team_id = %s", [team_id])
            if cursor.fetchone()[0] >= total:
                break
            if time.monotonic() - started > seconds * 4 + 60:
                raise SystemExit("latency run: not every event was stored in time")
            time.sleep(0.1)
        cursor.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY stored - enqueued) FROM benchmark_stored WHERE team_id = %s",
            [team_id],
        )
        p50, p95, p99 = cursor.fetchone()[0]
        cursor.execute("DROP TRIGGER IF EXISTS benchmark_note_stored ON posthog_event")
    return p50, p95, p99


def ingestion_children(root: int) -> list[int]:
    """The server's ingestion processes (each names itself ``ingestion-<i>``)."""
    pids = []
    for pid in process_tree(root):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if pid != root and name.startswith("ingestion-"):
            pids.append(pid)
    return sorted(pids)


def wait_until_consuming(redis: object, queue: str, processes: int, server: subprocess.Popen[bytes]) -> None:
    """Until every ingestion process's Celery source (or the single server's) has announced itself."""
    from plugin_server.ingestion.router import slice_queue
    from plugin_server.ingestion.sources.celery import priority_lists

    queues = [queue] if processes == 1 else [slice_queue(queue, index) for index in range(processes)]
    keys = [f"@posthog-plugin-server/celery/{priority_lists(name)[0]}/consumers" for name in queues]
    deadline = time.monotonic() + 120
    while not all(redis.scard(key) for key in keys):  # type: ignore[attr-defined]
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("the server's consumers did not start")
        time.sleep(0.1)


def run(
    processes: int, concurrency: int, events: int, distinct_ids: int, timeout: float,
    profile: str | None = None, latency_seconds: float = 0.0,
) -> Result:
    from django.db import connection

    from plugin_server.redis_client import get_redis
    from plugin_server.status import PING_KEY
    from tests.factories import create_plugin, create_plugin_config, create_team

    team = create_team(name=f"benchmark p={processes} c={concurrency}", api_token=f"benchmark-{uuid.uuid4().hex}")
    create_plugin_config(team=team, plugin=create_plugin(organization=team.organization, source=PLUGIN))
    queue = f"benchmark-{uuid.uuid4().hex[:8]}"
    staging = f"{queue}-staging"
    redis = get_redis()
    sent = time.monotonic()
    send_tasks(staging, team.id, events, distinct_ids)
    print(f"  wrote {events} tasks to the staging list in {time.monotonic() - sent:.1f} s", flush=True)
    redis.delete(PING_KEY)
    env = {
        **os.environ,
        "PLUGINS_CELERY_QUEUE": queue,
        "PLUGINS_RELOAD_PUBSUB_CHANNEL": f"{queue}-reload",
        "WORKER_CONCURRENCY": str(concurrency),
        "INGESTION_PROCESSES": str(processes),
        "LOG_LEVEL": "warn",
        "DISABLE_MMDB": "true",
    }
    server = subprocess.Popen([sys.executable, "manage.py", "run_plugin_server"], cwd=ROOT, env=env)
    latency = None
    try:
        deadline = time.monotonic() + 60
        while redis.get(PING_KEY) is None:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.05)
        wait_until_consuming(redis, queue, processes, server)
        time.sleep(1.0)  # the children's last start-up work (plugin workers) out of the timed part
        pids = process_tree(server.pid)
        profiler = None
        if profile:
            # Samples the process that ingests over the timed part: the server itself with one
            # ingestion process, else the first ingestion process (py-spy is not a requirement).
            target = server.pid if processes == 1 else ingestion_children(server.pid)[0]
            out = f"{profile}-p{processes}-c{concurrency}-d{distinct_ids}.txt"
            profiler = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(target), "--format", "raw", "--rate", "250", *PROFILE_FLAGS[os.environ.get("BENCH_PROFILE", "gil")], "-o", out, "--nonblocking"], stdout=subprocess.DEVNULL)
        cpu_before = cpu_seconds(pids)
        peak = rss_bytes(pids)
        peak_pss = pss_bytes(pids)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            backends_before = cpu_seconds([row[0] for row in cursor.fetchall()])
        redis_before = redis_cpu_seconds(redis)
        started = time.monotonic()
        redis.rename(staging, queue)
        with connection.cursor() as cursor:
            while True:
                cursor.execute("SELECT count(*) FROM posthog_event WHERE team_id = %s", [team.id])
                if cursor.fetchone()[0] >= events:
                    break
                if time.monotonic() - started > timeout:
                    raise SystemExit("timed out before every event was stored")
                pids = process_tree(server.pid)
                peak = max(peak, rss_bytes(pids))
                peak_pss = max(peak_pss, pss_bytes(pids))
                time.sleep(0.1)
        seconds = time.monotonic() - started
        redis_cpu = redis_cpu_seconds(redis) - redis_before
        pids = process_tree(server.pid)
        cpu_after = cpu_seconds(pids)
        peak = max(peak, rss_bytes(pids))
        peak_pss = max(peak_pss, pss_bytes(pids))
        cpu = sum(cpu_after.values()) - sum(cpu_before.get(pid, 0.0) for pid in cpu_after)
        for pid in sorted(cpu_after):
            name = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}/comm").exists() else "?"
            print(f"    pid {pid} ({name}): {cpu_after[pid] - cpu_before.get(pid, 0.0):.2f} s CPU, PSS {pss_bytes([pid]) / 2**20:.0f} MiB", flush=True)
        # The server's own Postgres backends over the timed part.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            backends_after = cpu_seconds([row[0] for row in cursor.fetchall()])
        postgres_cpu = sum(backends_after.values()) - sum(backends_before.get(pid, 0.0) for pid in backends_after)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        if latency_seconds > 0:
            latency = measure_latency(queue, team.id, events / seconds / 2, latency_seconds, distinct_ids)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    return Result(processes, concurrency, distinct_ids, events, seconds, cpu, peak, peak_pss, postgres_cpu, redis_cpu, latency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--distinct-ids", type=int, nargs="+", default=[1_000])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="INGESTION_PROCESSES values to run")
    parser.add_argument("--concurrency", type=int, default=1, help="WORKER_CONCURRENCY (plugin workers per ingesting process)")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/posthog_bench_ingest")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--latency", action="store_true", help="after each run, p50/p95/p99 latency at half its rate")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--profile", metavar="PREFIX", help="record the ingesting process with py-spy into PREFIX-p<processes>-c<concurrency>-d<ids>.txt (collapsed stacks)")
    args = parser.parse_args()

    setup_django(args.database_url)
    results = []
    for distinct_ids in args.distinct_ids:
        for processes in args.processes:
            print(f"INGESTION_PROCESSES={processes}: {args.events} events, {distinct_ids} distinct ids", flush=True)
            latency_seconds = args.latency_seconds if args.latency else 0.0
            results.append(run(processes, args.concurrency, args.events, distinct_ids, args.timeout, args.profile, latency_seconds))
            print("  " + results[-1].line(), flush=True)
    print()
    for result in results:
        print(result.line())


if __name__ == "__main__":
    main()
