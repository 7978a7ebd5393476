#!/usr/bin/env python
"""Capture endpoint benchmark: events/s accepted under gunicorn, and end to end into Postgres.

Accepted: gunicorn serves ``settings.wsgi`` with N sync workers; C client
processes send R requests of B events each (B=1: posthog-js' single events;
B=100: posthog-python's batches of ``flush_at=100``) as fast as answers come
back. An event counts as accepted when its request got 200, which is only
after its task is on the Redis queue; the queue's length is checked against
it. Printed per run: events/s, requests/s, latency p50/p99, and the CPU of
the gunicorn processes per event.

End to end: gunicorn (N workers) and ``./manage.py run_plugin_server`` run
together; the clients send E events in batches of 100 over D distinct ids;
the clock stops when all E are in ``posthog_event``.

Usage (from the repository root, services up)::

    .venv/bin/python benchmarks/capture.py [--workers 1 2] [--batch 1 100] [--requests 2000] [--clients 4] [--e2e-events 20000]

It uses its own database (``--database-url``, created and migrated if
missing) and throw-away queues, so it can run beside the test suite. The
clients run on the same machine and take CPU from the server: on 2 cores
the figures are a floor.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_celery import cpu_seconds, process_tree, setup_django  # noqa: E402


@dataclass
class Accepted:
    workers: int
    batch: int
    requests: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float

    def line(self) -> str:
        events = self.requests * self.batch
        p50 = statistics.median(self.latencies) * 1000
        p99 = statistics.quantiles(self.latencies, n=100)[98] * 1000
        return (
            f"workers={self.workers} batch={self.batch}: {events} events in {self.seconds:.2f} s = {events / self.seconds:,.0f} events/s "
            f"({self.requests / self.seconds:,.0f} requests/s), latency p50 {p50:.1f} ms p99 {p99:.1f} ms, "
            f"gunicorn CPU {self.cpu_seconds * 1000 / events:.3f} ms/event"
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


GUNICORN_OPTIONS: list[str] = []  # --gunicorn-options, e.g. "--worker-class gthread --threads 4"


def start_gunicorn(workers: int, queue: str) -> tuple[subprocess.Popen[bytes], str]:
    import requests

    port = free_port()
    env = {**os.environ, "PLUGINS_CELERY_QUEUE": queue, "LOG_LEVEL": "warn", "DISABLE_MMDB": "true"}
    command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}", "--backlog", "2048", *GUNICORN_OPTIONS, "settings.wsgi:application"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/flags/", timeout=1).status_code == 200:
                return server, url
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("gunicorn did not start")
        time.sleep(0.1)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()


def client(url: str, bodies: list[bytes], results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """One client process: every body POSTed to /batch/ in turn; (latencies, failures) reported."""
    import requests

    session = requests.Session()
    latencies, failures = [], 0
    for body in bodies:
        started = time.perf_counter()
        response = session.post(url + "/batch/", data=body, headers={"Content-Type": "application/json"}, timeout=60)
        latencies.append(time.perf_counter() - started)
        failures += response.status_code != 200
    results.put((latencies, failures))


def bodies(token: str, requests: int, batch: int, distinct_ids: int, offset: int = 0) -> list[bytes]:
    out = []
    for number in range(requests):
        events = [
            {
                "event": "$pageview",
                "distinct_id": f"user-{(offset + number * batch + n) % distinct_ids}",
                "properties": {"$current_url": "https://example.com/pricing", "$browser": "Chrome", "n": number * batch + n},
                "timestamp": "2026-12-05T08:00:00.000Z",
            }
            for n in range(batch)
        ]
        out.append(json.dumps({"api_key": token, "batch": events, "sent_at": "2026-12-05T08:00:01.000Z"}).encode())
    return out


def send(url: str, token: str, requests: int, batch: int, clients: int, distinct_ids: int) -> tuple[float, list[float]]:
    """All requests from ``clients`` processes; (seconds, latencies)."""
    share = [bodies(token, requests // clients, batch, distinct_ids, offset=index * 1_000_003) for index in range(clients)]
    results: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    workers = [multiprocessing.Process(target=client, args=(url, part, results)) for part in share]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    latencies: list[float] = []
    failures = 0
    for _ in workers:
        part, failed = results.get(timeout=600)
        latencies += part
        failures += failed
    seconds = time.monotonic() - started
    for worker in workers:
        worker.join()
    if failures:
        raise SystemExit(f"{failures} requests were refused")
    return seconds, latencies


def accepted(workers: int, batch: int, requests: int, clients: int, token: str) -> Accepted:
    from plugin_server.redis_client import get_redis

    queue = f"benchmark-capture-{uuid.uuid4().hex[:8]}"
    server, url = start_gunicorn(workers, queue)
    redis = get_redis()
    try:
        send(url, token, clients * 2, batch, clients, 1000)  # warm: connections, token cache, imports
        redis.delete(queue)
        pids = process_tree(server.pid)
        before = cpu_seconds(pids)
        seconds, latencies = send(url, token, requests, batch, clients, 1000)
        after = cpu_seconds(process_tree(server.pid))
        queued = redis.llen(queue)
        sent = (requests // clients) * clients
        if queued != sent * batch:
            raise SystemExit(f"{queued} tasks on the queue for {sent * batch} accepted events")
    finally:
        stop(server)
        redis.delete(queue)
    cpu = sum(after.values()) - sum(before.get(pid, 0.0) for pid in after)
    return Accepted(workers, batch, sent, seconds, latencies, cpu)


def end_to_end(workers: int, events: int, clients: int, token: str, team_id: int, distinct_ids: int) -> str:
    from django.db import connection

    from plugin_server.redis_client import get_redis
    from plugin_server.status import PING_KEY

    queue = f"benchmark-capture-e2e-{uuid.uuid4().hex[:8]}"
    redis = get_redis()
    redis.delete(PING_KEY)
    env = {**os.environ, "PLUGINS_CELERY_QUEUE": queue, "PLUGINS_RELOAD_PUBSUB_CHANNEL": f"{queue}-reload", "LOG_LEVEL": "warn", "DISABLE_MMDB": "true"}
    consumer = subprocess.Popen([sys.executable, "manage.py", "run_plugin_server"], cwd=ROOT, env=env)
    web, url = start_gunicorn(workers, queue)
    try:
        deadline = time.monotonic() + 60
        while redis.get(PING_KEY) is None:
            if time.monotonic() > deadline or consumer.poll() is not None:
                raise SystemExit("run_plugin_server did not start")
            time.sleep(0.05)
        requests = events // 100
        started = time.monotonic()
        sending, _ = send(url, token, requests, 100, clients, distinct_ids)
        with connection.cursor() as cursor:
            while True:
                cursor.execute("SELECT count(*) FROM posthog_event WHERE team_id = %s", [team_id])
                stored = cursor.fetchone()[0]
                if stored >= requests * 100:
                    break
                if time.monotonic() - started > 600:
                    raise SystemExit(f"timed out with {stored} of {requests * 100} events stored")
                time.sleep(0.1)
        seconds = time.monotonic() - started
    finally:
        stop(web)
        stop(consumer)
    total = requests * 100
    return (
        f"end to end, gunicorn workers={workers} + run_plugin_server: {total} events (batches of 100, {distinct_ids} distinct ids) "
        f"accepted in {sending:.2f} s, all in posthog_event after {seconds:.2f} s = {total / seconds:,.0f} events/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--requests", type=int, default=2000, help="requests per run of batch 1; batch B sends requests/B×10")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--e2e-events", type=int, default=20_000)
    parser.add_argument("--distinct-ids", type=int, default=1_000)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/posthog_bench_capture")
    parser.add_argument("--gunicorn-options", default="", help='extra gunicorn arguments, e.g. "--worker-class gthread --threads 4"')
    args = parser.parse_args()
    GUNICORN_OPTIONS.extend(args.gunicorn_options.split())

    setup_django(args.database_url)
    from tests.factories import create_team

    team = create_team(name="benchmark capture", api_token=f"phc_benchmark_{uuid.uuid4().hex}")
    lines = []
    for workers in args.workers:
        for batch in args.batch:
            requests = args.requests if batch == 1 else max(args.clients, args.requests * 10 // batch)
            result = accepted(workers, batch, requests, args.clients, team.api_token)
            lines.append(result.line())
            print("  " + lines[-1], flush=True)
    if args.e2e_events:
        for workers in args.workers:
            lines.append(end_to_end(workers, args.e2e_events, args.clients, team.api_token, team.id, args.distinct_ids))
            print("  " + lines[-1], flush=True)
            team = create_team(name="benchmark capture", api_token=f"phc_benchmark_{uuid.uuid4().hex}")
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
