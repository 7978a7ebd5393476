#!/usr/bin/env python
"""What the Celery source's take costs Redis, poison-pill counting included.

N real Celery messages (``process_event_with_plugins``, ~1.4 KB, sent with a
real Celery producer, spread over the plain list and kombu's priority lists)
are taken by ``CelerySource.poll`` in batches of 500 and acknowledged; the
clock and Redis's own CPU (``INFO cpu``: the server's user + system time)
run over the take-and-ack loop only. Printed: messages/s and Redis CPU per
message. Compare with the budget of about 0.11 ms of CPU per event for the
whole machine. ``--crash-pending`` leaves one counted message in the
queue's attempts hash, as after a crash until the message is acknowledged:
the take then hashes every message and looks its count up.

Usage (from the repository root, services up)::

    REDIS_URL=redis://127.0.0.1:6379/14 .venv/bin/python benchmarks/celery_take.py [--messages 50000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--crash-pending", action="store_true",
        help="one counted message left in the attempts hash (a crash not yet resolved): every take hashes and looks up",
    )
    options = parser.parse_args()

    import django

    django.setup()
    import redis
    from celery import Celery

    from plugin_server.ingestion.sources.celery import CelerySource
    from tests.ingestion.celery_tasks import task_args

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/14")
    client = redis.Redis.from_url(url)
    queue = f"bench-take-{uuid.uuid4().hex[:8]}"
    staging = f"{queue}-staging"
    app = Celery("bench", broker=url)
    with app.producer_or_acquire() as producer:
        for index in range(1_000):
            app.send_task(
                "posthog.tasks.process_event.process_event_with_plugins",
                args=task_args({"event": "$pageview", "properties": {"$current_url": "https://example.com/" + "x" * 150, "n": index}}),
                queue=staging, producer=producer,
            )
    app.close()
    templates = client.lrange(staging, 0, -1)
    client.delete(staging)
    lists = [queue, f"{queue}\x06\x163", f"{queue}\x06\x166"]
    with client.pipeline(transaction=False) as pipe:
        for index in range(options.messages):
            # Distinct bytes per message, as distinct tasks have: the task id differs.
            message = templates[index % len(templates)].replace(b'"delivery_tag": "', f'"delivery_tag": "{index}-'.encode(), 1)
            pipe.lpush(lists[index % 10 // 4], message)
            if index % 5_000 == 4_999:
                pipe.execute()
        pipe.execute()
    size = sum(len(message) for message in templates) / len(templates)

    source = CelerySource(queue=queue, client=client)
    source.start()
    attempts_key = f"@posthog-plugin-server/celery/{queue}/attempts"
    if options.crash_pending:
        client.hset(attempts_key, "0" * 40, 1)
    cpu_before = _redis_cpu(client)
    started = time.perf_counter()
    taken = 0
    while taken < options.messages:
        batch = source.poll(options.batch, timeout=0)
        source.ack(batch)
        taken += len(batch)
    seconds = time.perf_counter() - started
    cpu = _redis_cpu(client) - cpu_before
    source.close()
    assert client.hlen(attempts_key) == (1 if options.crash_pending else 0)
    client.delete(attempts_key)
    print(
        f"{'a crash pending' if options.crash_pending else 'no crash pending'}: {taken} messages of ~{size:,.0f} bytes in {seconds:.2f} s = {taken / seconds:,.0f} messages/s;"
        f" Redis CPU {cpu * 1e6 / taken:.1f} µs/message"
    )


def _redis_cpu(client: object) -> float:
    info = client.info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


if __name__ == "__main__":
    main()
