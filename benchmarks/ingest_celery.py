#!/usr/bin/env python
"""End-to-end ingestion benchmark: Celery tasks in Redis → run_plugin_server → posthog_event.

For each WORKER_CONCURRENCY given: N ``process_event_with_plugins`` tasks
(over D distinct ids, one team with one simple ``process_event`` plugin) are
sent with a real Celery producer to a staging list; a fresh
``./manage.py run_plugin_server`` is started and, once its ping key is in
Redis, the staging list is renamed onto its queue in one step and the clock
starts. It stops when all N events are in ``posthog_event``.

Printed per run: events/s, the server's CPU ms per event (user + system of
the server process and all its children, i.e. the plugin workers, measured
from /proc over the timed part only), the peak RSS of all those processes
together (sampled every 100 ms) and the CPU of the server's own Postgres
backends per event (from /proc; the database is the benchmark's own).

Usage (from the repository root, services up)::

    .venv/bin/python benchmarks/ingest_celery.py [--events 10000] [--distinct-ids 1000] [--concurrency 1 2]

It uses its own database (``--database-url``, created and migrated if
missing) and a throw-away queue, so it can run beside the test suite.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
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
    concurrency: int
    events: int
    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    postgres_cpu_seconds: float

    def line(self) -> str:
        return (
            f"WORKER_CONCURRENCY={self.concurrency}: {self.events} events in {self.seconds:.2f} s = "
            f"{self.events / self.seconds:,.0f} events/s; server CPU {self.cpu_seconds * 1000 / self.events:.3f} ms/event; "
            f"peak RSS {self.peak_rss_bytes / 2**20:.0f} MB; Postgres CPU {self.postgres_cpu_seconds * 1000 / self.events:.3f} ms/event"
        )


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


def send_tasks(queue: str, team_id: int, events: int, distinct_ids: int) -> None:
    from celery import Celery
    from django.conf import settings

    app = Celery("benchmark-producer", broker=settings.REDIS_URL)
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    with app.producer_or_acquire() as producer:
        for index in range(events):
            data = {"event": "$pageview", "properties": {"$current_url": "https://example.com/", "n": index}}
            args = [f"user-{index % distinct_ids}", "127.0.0.1", "http://localhost", data, team_id, now, now]
            app.send_task("posthog.tasks.process_event.process_event_with_plugins", args=args, queue=queue, producer=producer)
    app.close()


def run(concurrency: int, events: int, distinct_ids: int, timeout: float, profile: str | None = None) -> Result:
    from django.db import connection

    from plugin_server.redis_client import get_redis
    from plugin_server.status import PING_KEY
    from tests.factories import create_plugin, create_plugin_config, create_team

    team = create_team(name=f"benchmark c={concurrency}", api_token=f"benchmark-{uuid.uuid4().hex}")
    create_plugin_config(team=team, plugin=create_plugin(organization=team.organization, source=PLUGIN))
    queue = f"benchmark-{uuid.uuid4().hex[:8]}"
    staging = f"{queue}-staging"
    redis = get_redis()
    sent = time.monotonic()
    send_tasks(staging, team.id, events, distinct_ids)
    print(f"  sent {events} tasks in {time.monotonic() - sent:.1f} s", flush=True)
    redis.delete(PING_KEY)
    env = {
        **os.environ,
        "PLUGINS_CELERY_QUEUE": queue,
        "PLUGINS_RELOAD_PUBSUB_CHANNEL": f"{queue}-reload",
        "WORKER_CONCURRENCY": str(concurrency),
        "LOG_LEVEL": "warn",
    }
    server = subprocess.Popen([sys.executable, "manage.py", "run_plugin_server"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while redis.get(PING_KEY) is None:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.05)
        pids = process_tree(server.pid)
        profiler = None
        if profile:
            # Samples the main process over the timed part (py-spy is not a requirement: pip install py-spy).
            out = f"{profile}-c{concurrency}.txt"
            profiler = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(server.pid), "--format", "raw", "--rate", "250", "--gil", "-o", out, "--nonblocking"], stdout=subprocess.DEVNULL)
        cpu_before = cpu_seconds(pids)
        peak = rss_bytes(pids)
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
                time.sleep(0.1)
        seconds = time.monotonic() - started
        pids = process_tree(server.pid)
        cpu_after = cpu_seconds(pids)
        peak = max(peak, rss_bytes(pids))
        cpu = sum(cpu_after.values()) - sum(cpu_before.get(pid, 0.0) for pid in cpu_after)
        for pid in sorted(cpu_after):
            name = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}/comm").exists() else "?"
            print(f"    pid {pid} ({name}): {cpu_after[pid] - cpu_before.get(pid, 0.0):.2f} s CPU", flush=True)
        # The server's own Postgres backends (it keeps its connections; they
        # were opened by the timed run): their whole CPU time.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            backends = [row[0] for row in cursor.fetchall()]
        postgres_cpu = sum(cpu_seconds(backends).values())
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    return Result(concurrency, events, seconds, cpu, peak, postgres_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--distinct-ids", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/posthog_bench_ingest")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--profile", metavar="PREFIX", help="record the main process with py-spy into PREFIX-c<concurrency>.txt (collapsed stacks)")
    args = parser.parse_args()

    setup_django(args.database_url)
    results = []
    for concurrency in args.concurrency:
        print(f"WORKER_CONCURRENCY={concurrency}: {args.events} events, {args.distinct_ids} distinct ids", flush=True)
        results.append(run(concurrency, args.events, args.distinct_ids, args.timeout, args.profile))
        print("  " + results[-1].line(), flush=True)
    print()
    for result in results:
        print(result.line())


if __name__ == "__main__":
    main()
