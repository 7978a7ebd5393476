#!/usr/bin/env python
"""CPU per event of the main process's own ingestion steps, without the noise of a whole server.

The end-to-end benchmark (``ingest_celery.py``) measures a server process
sharing two cores with Postgres, Redis, the plugin workers and whatever else
runs on the machine: its CPU-per-event figure moves ±25% from run to run.
This one times, in one process and with ``time.process_time``, the per-event
Python work of the main process on real Celery messages:

- decode: Celery envelope → event (``plugin_server.ingestion.decode``);
- worker reply: parsing one reply frame holding all the events, as
  ``plugin_server.workers.protocol.receive_from_worker`` parses it (the
  pipe read itself is left out);
- check + prepare: ``check_event`` + ``prepare_event`` (the ingester's per-event part).

Each is run ``--rounds`` times over the same N messages; the best round is
printed in µs per event (the best is the run least disturbed by neighbours).
Database writes, Redis round trips and the workers are not included.

Usage (from the repository root, Redis up)::

    .venv/bin/python benchmarks/ingest_cpu.py [--events 5000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def celery_payloads(events: int) -> list[bytes]:
    """N ``process_event_with_plugins`` messages as a real Celery producer writes them."""
    from celery import Celery
    from django.conf import settings

    from plugin_server.redis_client import get_redis

    queue = f"benchmark-cpu-{uuid.uuid4().hex[:8]}"
    app = Celery("benchmark-producer", broker=settings.REDIS_URL)
    now = "2026-11-27T20:00:00+00:00"
    with app.producer_or_acquire() as producer:
        for index in range(events):
            data = {"event": "$pageview", "properties": {"$current_url": "https://example.com/", "$lib": "web", "n": index}}
            args = [f"user-{index % 1000}", "127.0.0.1", "http://localhost", data, 1, now, now]
            app.send_task("posthog.tasks.process_event.process_event_with_plugins", args=args, queue=queue, producer=producer)
    app.close()
    redis = get_redis()
    payloads: list[bytes] = redis.lrange(queue, 0, -1)  # type: ignore[assignment]
    redis.delete(queue)
    return payloads


def best_of(rounds: int, work: Callable[[], object], count: int) -> float:
    """The least CPU (µs per item) of ``rounds`` runs of ``work``."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.base")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from plugin_server.events import Delivery
    from plugin_server.ingestion.decode import decode
    from plugin_server.ingestion.prepare import check_event, prepare_event
    from plugin_server.ingestion.teams import TeamInfo
    from plugin_server.workers.protocol import json_codec

    payloads = celery_payloads(args.events)
    deliveries = [Delivery(payload, index, "benchmark") for index, payload in enumerate(payloads)]
    events = [decode(delivery, 1_000_000) for delivery in deliveries]
    team = TeamInfo(id=1, uuid=uuid.uuid4(), organization_id=uuid.uuid4(), anonymize_ips=False, ingested_event=True, slack_incoming_webhook=None)
    received = datetime.datetime.now(datetime.timezone.utc)
    frame = json.dumps({"t": "result", "events": events}, separators=(",", ":")).encode()

    def prepare() -> list[object]:
        return [prepare_event(index, check_event(event, 1_000_000)[0], team, received) for index, event in enumerate(events)]

    figures = {
        "decode": best_of(args.rounds, lambda: [decode(delivery, 1_000_000) for delivery in deliveries], len(deliveries)),
        "worker reply": best_of(args.rounds, lambda: json_codec.loads(frame), len(events)),
        "check + prepare": best_of(args.rounds, prepare, len(events)),
    }
    for name, value in figures.items():
        print(f"{name:>16}: {value:6.1f} µs/event")
    print(f"{'total':>16}: {sum(figures.values()):6.1f} µs/event")


if __name__ == "__main__":
    main()
