"""Benchmark: PersonManager.apply alone (the person side of ingestion) on Postgres.

Usage (from the repository root, services running):

    .venv/bin/python benchmarks/persons_apply.py [--events N] [--batch B] [--users U]

Creates a throw-away database (``bench_posthog_persons``) and applies N person
updates in batches of B, one transaction per batch, for four workloads:

- ``known``: pageviews of U users already in the distinct-id cache;
- ``set``: every event of U existing users has ``$set`` and ``$increment``;
- ``new``: every event comes from an unseen distinct id;
- ``identify``: every event is an ``$identify`` linking a new anonymous id.

Prints events/s, our CPU and the Postgres backend's CPU per event.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.test")
os.environ.setdefault("PLUGIN_SERVER_TEST_DB", "bench_posthog_persons")

import django  # noqa: E402

from benchmarks.ingester_postgres import backend_cpu_seconds  # noqa: E402

SENT_AT = datetime(2021, 5, 17, 10, 0, tzinfo=timezone.utc)


def workloads(team_id: int, users: int) -> dict[str, Callable[[int], tuple[str, str, dict[str, object]]]]:
    """Name → function of the event number giving (distinct id, event name, properties)."""
    return {
        "known": lambda n: (f"user-{n % users}", "$pageview", {}),
        "set": lambda n: (f"user-{n % users}", "$pageview", {"$set": {"plan": f"p{n % 7}"}, "$increment": {"n": 1}}),
        "new": lambda n: (f"new-{n}", "$pageview", {}),
        "identify": lambda n: (f"id-{n}", "$identify", {"$anon_distinct_id": f"anon-{n}", "$set": {"email": f"{n}@x"}}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--users", type=int, default=1_000)
    args = parser.parse_args()
    django.setup()
    from django.db import connection, transaction

    from plugin_server.ingestion.persons import PersonManager, PersonUpdate
    from plugin_server.ingestion.uuidt import uuidt
    from tests.factories import create_team

    test_db = connection.creation.create_test_db(verbosity=0, keepdb=False, serialize=False)
    try:
        team_id = create_team().id
        manager = PersonManager(lru_size=10_000)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (backend_pid,) = cursor.fetchone()

        def run(make: Callable[[int], tuple[str, str, dict[str, object]]], start: int, count: int) -> None:
            for offset in range(start, start + count, args.batch):
                updates = []
                for n in range(offset, min(offset + args.batch, start + count)):
                    distinct_id, event, properties = make(n)
                    updates.append(PersonUpdate(team_id, distinct_id, event, properties, SENT_AT, uuidt.text()))
                with transaction.atomic():
                    manager.apply(updates)

        # Create the users (and fill the cache) before measuring.
        run(workloads(team_id, args.users)["known"], 0, args.users)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE posthog_person, posthog_persondistinctid")  # as autovacuum would
        for name, make in workloads(team_id, args.users).items():
            backend_before = backend_cpu_seconds(backend_pid)
            cpu_before, wall_before = time.process_time(), time.perf_counter()
            run(make, 1_000_000, args.events)
            wall = time.perf_counter() - wall_before
            cpu = time.process_time() - cpu_before
            backend = backend_cpu_seconds(backend_pid) - backend_before
            print(
                f"{name:9s} {args.events} events in batches of {args.batch}: {args.events / wall:>9,.0f} events/s, "
                f"our CPU {cpu / args.events * 1000:.3f} ms/event, Postgres {backend / args.events * 1000:.3f} ms/event"
            )
    finally:
        connection.creation.destroy_test_db(test_db, verbosity=0)


if __name__ == "__main__":
    main()
