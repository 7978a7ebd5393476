"""Benchmark: Ingester.ingest alone (no queue, no plugins) into Postgres.

Usage (from the repository root, services running):

    DJANGO_SETTINGS_MODULE=settings.test .venv/bin/python benchmarks/ingester_postgres.py [--events N] [--batch B]

Creates a throw-away database (``bench_posthog_ingest``), ingests N events
of 10 teams and 1 000 users in batches of B (pageviews and autocaptures with
elements, every 10th with ``$set``), and prints events/s, our CPU per event
and the Postgres backend's CPU per event (read from /proc). The first batch
warms the caches and is not counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.test")
os.environ.setdefault("PLUGIN_SERVER_TEST_DB", "bench_posthog_ingest")

import django  # noqa: E402


def backend_cpu_seconds(pid: int) -> float:
    """CPU (user + system) a Postgres backend has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_batch(team_ids: list[int], size: int, offset: int) -> list[dict[str, Any]]:
    from plugin_server.ingestion.uuidt import uuidt

    now = "2021-05-17T10:00:00.000000+00:00"
    events = []
    for number in range(offset, offset + size):
        properties: dict[str, Any] = {
            "$current_url": f"https://example.com/page/{number % 50}",
            "$browser": "Firefox",
            "$os": "Linux",
            "$lib": "web",
            "token": "x",
            "distinct_id": f"user-{number % 1000}",
        }
        name = "$pageview"
        if number % 3 == 0:
            name = "$autocapture"
            properties["$elements"] = [
                {"tag_name": "button", "$el_text": f"Buy {number % 20}", "attr__class": "btn btn-primary", "nth_child": 1, "nth_of_type": 1},
                {"tag_name": "div", "nth_child": 2, "nth_of_type": 1, "attr__class": "row"},
                {"tag_name": "body", "nth_child": 1, "nth_of_type": 1},
            ]
        if number % 10 == 0:
            properties["$set"] = {"plan": f"plan-{number % 3}"}
        events.append(
            {
                "event": name,
                "distinct_id": f"user-{number % 1000}",
                "team_id": team_ids[number % len(team_ids)],
                "uuid": str(uuidt()),
                "ip": "127.0.0.1",
                "site_url": "http://localhost:8000",
                "now": now,
                "sent_at": now,
                "timestamp": now,
                "properties": properties,
            }
        )
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    django.setup()
    from django.db import connection

    from plugin_server.ingestion.ingester import Ingester
    from tests.factories import create_team

    test_db = connection.creation.create_test_db(verbosity=0, keepdb=False, serialize=False)
    try:
        team_ids = [create_team(ingested_event=True).id for _ in range(10)]
        ingester = Ingester()
        ingester.ingest(make_batch(team_ids, args.batch, 0))
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (backend_pid,) = cursor.fetchone()
        batches = [make_batch(team_ids, args.batch, args.batch * (index + 1)) for index in range(args.events // args.batch)]
        count = sum(len(batch) for batch in batches)
        backend_before = backend_cpu_seconds(backend_pid)
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        for batch in batches:
            result = ingester.ingest(batch)
            assert len(result.stored) == len(batch), result.invalid[:1]
        wall = time.perf_counter() - wall_before
        cpu = time.process_time() - cpu_before
        backend = backend_cpu_seconds(backend_pid) - backend_before
        print(f"{count} events in batches of {args.batch}: {count / wall:,.0f} events/s")
        print(f"our CPU {cpu / count * 1000:.3f} ms/event, Postgres backend CPU {backend / count * 1000:.3f} ms/event")
    finally:
        connection.creation.destroy_test_db(test_db, verbosity=0)


if __name__ == "__main__":
    main()
