#!/usr/bin/env python
"""ClickHouse writer benchmark: N encoded events on clickhouse_events_proto → run_clickhouse_writer → ClickHouse.

For each writer count given: N events (over D distinct ids, encoded exactly
as the Kafka sink encodes them, ``messages.event_value``) are produced to a
fresh ``clickhouse_events_proto`` topic of P partitions (a prefix of the run's
own); a fresh database gets the plain layout; then W ``./manage.py
run_clickhouse_writer`` processes are started in one consumer group. The
clock starts when the first rows are in ClickHouse (so Django start-up and
the group join are left out; they are printed apart) and stops when all N
are.

Printed per run: events/s inserted, the writers' CPU ms per event (user +
system from /proc over the timed part), their peak RSS (VmHWM, summed), and
the ClickHouse server's CPU ms per event over the same span.

Usage (from the repository root, services up)::

    .venv/bin/python benchmarks/clickhouse_writer.py [--events 200000] [--distinct-ids 1000] [--partitions 4] \\
        [--writers 1 2] [--batch-size 50000] [--batch-ms 1000]
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
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from ingest_celery import cpu_seconds  # noqa: E402 - the same /proc reading as the other benchmarks

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.base")


@dataclass
class Result:
    writers: int
    events: int
    startup_seconds: float
    timed_events: int
    seconds: float
    writer_cpu_seconds: float
    peak_rss_bytes: int
    clickhouse_cpu_seconds: float

    def line(self) -> str:
        return (
            f"writers={self.writers}: {self.timed_events} events in {self.seconds:.2f} s = "
            f"{self.timed_events / self.seconds:,.0f} events/s (start-up and join {self.startup_seconds:.1f} s before); "
            f"writer CPU {self.writer_cpu_seconds * 1000 / self.timed_events:.4f} ms/event; "
            f"peak RSS {self.peak_rss_bytes / 2**20:.0f} MB; "
            f"ClickHouse CPU {self.clickhouse_cpu_seconds * 1000 / self.timed_events:.4f} ms/event"
        )


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def clickhouse_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().startswith("clickhouse"):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def produce(bootstrap: str, topic: str, partitions: int, events: int, distinct_ids: int) -> float:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from plugin_server.clickhouse.messages import event_value
    from plugin_server.sinks.base import PreparedEvent

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1_000_000})
    start = datetime.now(timezone.utc)
    began = time.monotonic()
    for index in range(events):
        event = PreparedEvent(
            uuid=str(uuid.uuid4()),
            team_id=2,
            distinct_id=f"user-{index % distinct_ids}",
            event="$pageview",
            properties={"$current_url": "https://example.com/", "n": index, "benchmarked": True},
            timestamp=start + timedelta(milliseconds=index),
        )
        while True:
            try:
                producer.produce(topic, event_value(event), event.uuid)
                break
            except BufferError:
                producer.poll(0.1)
        if index % 1000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    return time.monotonic() - began


def run(writers: int, args: argparse.Namespace) -> Result:
    from io import StringIO

    from django.core.management import call_command

    from plugin_server.clickhouse.client import make_client
    from plugin_server.config import get_config

    config = get_config()
    bootstrap = config.kafka_hosts or "127.0.0.1:9092"
    name = f"bench_{uuid.uuid4().hex[:10]}"
    prefix = name + "_"
    database = name
    call_command("setup_clickhouse", database=database, stdout=StringIO())
    seconds = produce(bootstrap, prefix + "clickhouse_events_proto", args.partitions, args.events, args.distinct_ids)
    print(f"produced {args.events} events to {args.partitions} partitions in {seconds:.1f} s", flush=True)
    client = make_client(config, database=database)

    def stored() -> int:
        return int(client.execute("SELECT count() FROM events")[0][0])

    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings.base", "LOG_LEVEL": "warn", "KAFKA_HOSTS": bootstrap}
    command = [
        sys.executable, "manage.py", "run_clickhouse_writer", "--topic-prefix", prefix, "--database", database,
        "--group", name, "--batch-size", str(args.batch_size), "--batch-ms", str(args.batch_ms),
        "--session-timeout-ms", "6000",
    ]
    launched = time.monotonic()
    processes = [subprocess.Popen(command, cwd=ROOT, env=environment) for _ in range(writers)]
    pids = [process.pid for process in processes]
    server = clickhouse_pids()
    try:
        while (first := stored()) == 0:
            time.sleep(0.05)
        began = time.monotonic()
        writer_cpu = sum(cpu_seconds(pids).values())
        server_cpu = sum(cpu_seconds(server).values())
        deadline = began + args.timeout
        while (count := stored()) < args.events and time.monotonic() < deadline:
            time.sleep(0.05)
        ended = time.monotonic()
        if count < args.events:
            raise SystemExit(f"only {count} of {args.events} events arrived in {args.timeout} s")
        writer_cpu = sum(cpu_seconds(pids).values()) - writer_cpu
        server_cpu = sum(cpu_seconds(server).values()) - server_cpu
        rss = sum(peak_rss(pid) for pid in pids)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(60)
        client.execute(f"DROP DATABASE IF EXISTS {database}")
        client.disconnect()
    return Result(writers, args.events, began - launched, args.events - first, ended - began, writer_cpu, rss, server_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--distinct-ids", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=50_000)
    parser.add_argument("--batch-ms", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    import django

    django.setup()
    for writers in args.writers:
        print(run(writers, args).line(), flush=True)


if __name__ == "__main__":
    main()
