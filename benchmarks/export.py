#!/usr/bin/env python
"""Export benchmark: slow exports must not slow ingestion (run_plugin_server, Celery in Redis, Postgres).

For each WORKER_CONCURRENCY given: N ``process_event_with_plugins`` tasks are
pre-filled in a staging list; a fresh ``./manage.py run_plugin_server`` is
started and, once its ping key is in Redis, the staging list is renamed onto
its queue and the clock starts. The events belong to as many teams as
workers (``--teams``, default: the concurrency; a team's plugins run in one
worker process of its own), each with one plugin whose ``on_event``:

- ``--plugin fetch`` (default): ``meta.fetch`` to a local HTTP endpoint that
  answers after ``--delay`` s (100 ms), an export to a slow webhook;
- ``--plugin cpu``: a few ms of pure computation per event, no meta call
  (the last event of each team then fetches once, to mark the end).

Printed per run: the time until all N events were stored, export calls/s
(calls the endpoint received over the time from the start to the last one),
the time until all exports ran, and the peak RSS of the server and its
workers together (sampled every 100 ms).

Usage (from the repository root, services up)::

    .venv/bin/python benchmarks/export.py [--events 2000] [--concurrency 1 2] [--plugin fetch|cpu]
        [--tasks-per-worker 10] [--server-root DIR]

``--server-root`` runs another checkout's server (e.g. the code before the
export lane, to compare). It uses its own database (``--database-url``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_celery import ROOT, process_tree, rss_bytes, send_tasks, setup_django  # noqa: E402

FETCH_PLUGIN = """
def on_event(event, meta):
    meta.fetch(meta.config['url'] + '/e')
"""
CPU_PLUGIN = """
import hashlib

def on_event(event, meta):
    digest = b''
    for i in range(300):
        digest = hashlib.sha256(digest + str(i).encode()).digest()
    if event['properties'].get('n') == int(meta.config['last']):
        meta.fetch(meta.config['url'] + '/last')
"""


@dataclass
class Result:
    concurrency: int
    plugin: str
    teams: int
    events: int
    stored_seconds: float
    exported_seconds: float
    calls: int
    peak_rss_bytes: int

    def line(self) -> str:
        rate = f"{self.calls / self.exported_seconds:,.0f} export calls/s, " if self.plugin == "fetch" else ""
        return (
            f"WORKER_CONCURRENCY={self.concurrency} ({self.plugin}, {self.teams} team(s)): {self.events} events stored in "
            f"{self.stored_seconds:.2f} s ({self.events / self.stored_seconds:,.0f} events/s); {rate}all exports done in "
            f"{self.exported_seconds:.2f} s; peak RSS {self.peak_rss_bytes / 2**20:.0f} MB"
        )


class Endpoint:
    """The export target: answers after ``delay`` s, counts calls and ``/last`` marks."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0
        self.last = 0
        self.lock = threading.Lock()

    @contextmanager
    def serving(self) -> Iterator[str]:
        endpoint = self

        class Answer(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real webhook endpoint would

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path != "/last":
                    time.sleep(endpoint.delay)
                with endpoint.lock:
                    endpoint.calls += 1
                    endpoint.last += self.path == "/last"
                # One write for the whole answer: headers and body in separate small writes meet
                # Nagle's algorithm and the client's delayed ACK (~40 ms a call), as no real server does.
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")

        ThreadingHTTPServer.request_queue_size = 256
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{httpd.server_address[1]}"
        finally:
            httpd.shutdown()
            httpd.server_close()


def run(concurrency: int, args: argparse.Namespace) -> Result:
    from django.db import connection

    from plugin_server.redis_client import get_redis
    from plugin_server.status import PING_KEY
    from tests.factories import create_plugin, create_plugin_config, create_team

    teams = args.teams or concurrency
    per_team = args.events // teams
    events = per_team * teams
    endpoint = Endpoint(args.delay)
    with endpoint.serving() as url:
        queue = f"benchmark-{uuid.uuid4().hex[:8]}"
        staging = f"{queue}-staging"
        team_ids = []
        for index in range(teams):
            team = create_team(name=f"export benchmark {index}", api_token=f"benchmark-{uuid.uuid4().hex}")
            source = FETCH_PLUGIN if args.plugin == "fetch" else CPU_PLUGIN
            plugin = create_plugin(organization=team.organization, source=source)
            create_plugin_config(team=team, plugin=plugin, config={"url": url, "last": str(per_team - 1)})
            send_tasks(staging, team.id, per_team, 100)
            team_ids.append(team.id)
        redis = get_redis()
        redis.delete(PING_KEY)
        env = {
            **os.environ,
            "PLUGINS_CELERY_QUEUE": queue,
            "PLUGINS_RELOAD_PUBSUB_CHANNEL": f"{queue}-reload",
            "WORKER_CONCURRENCY": str(concurrency),
            "TASKS_PER_WORKER": str(args.tasks_per_worker),
            "PLUGIN_FETCH_ALLOW_PRIVATE_NETWORKS": "true",
            "LOG_LEVEL": "warn",
            "DISABLE_MMDB": "true",
        }
        server = subprocess.Popen([sys.executable, "manage.py", "run_plugin_server"], cwd=args.server_root, env=env)
        try:
            deadline = time.monotonic() + 60
            while redis.get(PING_KEY) is None:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.05)
            peak = rss_bytes(process_tree(server.pid))
            started = time.monotonic()
            redis.rename(staging, queue)
            stored_at = exported_at = 0.0
            with connection.cursor() as cursor:
                while not (stored_at and exported_at):
                    now = time.monotonic() - started
                    if not stored_at:
                        cursor.execute("SELECT count(*) FROM posthog_event WHERE team_id = ANY(%s)", [team_ids])
                        if cursor.fetchone()[0] >= events:
                            stored_at = now
                    done = endpoint.calls >= events if args.plugin == "fetch" else endpoint.last >= teams
                    if done and not exported_at:
                        exported_at = now
                    if now > args.timeout:
                        raise SystemExit(f"timed out: stored at {stored_at}, {endpoint.calls} export calls")
                    peak = max(peak, rss_bytes(process_tree(server.pid)))
                    time.sleep(0.1)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    return Result(concurrency, args.plugin, teams, events, stored_at, exported_at, endpoint.calls, peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--teams", type=int, default=0, help="teams the events are spread over (0: one per worker)")
    parser.add_argument("--plugin", choices=("fetch", "cpu"), default="fetch")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds the endpoint takes to answer")
    parser.add_argument("--tasks-per-worker", type=int, default=10)
    parser.add_argument("--server-root", default=str(ROOT), help="the checkout whose server runs")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/posthog_bench_export")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    setup_django(args.database_url)
    results = []
    for concurrency in args.concurrency:
        print(f"WORKER_CONCURRENCY={concurrency}: {args.events} events, plugin {args.plugin}", flush=True)
        results.append(run(concurrency, args))
        print("  " + results[-1].line(), flush=True)
    print()
    for result in results:
        print(result.line())


if __name__ == "__main__":
    main()
