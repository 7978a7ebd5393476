#!/usr/bin/env python
"""End-to-end Kafka pipeline benchmark: events_plugin_ingestion → run_plugin_server × S → topics → writer → ClickHouse.

For each server count S given: a fresh topic (``--partitions``), a fresh
ClickHouse database with the plain layout (``setup_clickhouse``) and a fresh
``KAFKA_PREFIX`` for the produced topics. One ``run_clickhouse_writer`` and
S ``run_plugin_server`` processes (``KAFKA_ENABLED``, one team with one simple
``process_event`` plugin) are started; a warm-up of 200 events is produced
and awaited in ClickHouse (every consumer has joined its group, the plugins
are loaded). Then the clock starts, N events over D distinct ids are
produced to the topic the way the capture endpoint does (JSON, ``data``
double-encoded, keyed by person), and it stops when
``SELECT count() FROM events FINAL`` shows all of them.

Printed per run: events/s end to end; CPU ms per event of the servers
(each server process and its plugin workers) and of the writer, user +
system from /proc over the timed part; the peak RSS of all servers together
and of the writer (sampled every 100 ms).

Usage (from the repository root, services up)::

    .venv/bin/python benchmarks/ingest_kafka.py [--events 50000] [--distinct-ids 1000] [--servers 1 2] [--partitions 4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_celery import PLUGIN, cpu_seconds, process_tree, rss_bytes, setup_django  # noqa: E402

WARM_UP = 200


@dataclass
class Result:
    servers: int
    events: int
    seconds: float
    produce_seconds: float
    server_cpu: float
    writer_cpu: float
    server_rss: int
    writer_rss: int

    def line(self) -> str:
        return (
            f"{self.servers} server(s): {self.events} events in {self.seconds:.2f} s = {self.events / self.seconds:,.0f} events/s "
            f"(producing took {self.produce_seconds:.2f} s); CPU per event: servers {self.server_cpu * 1000 / self.events:.3f} ms, "
            f"writer {self.writer_cpu * 1000 / self.events:.3f} ms; peak RSS: servers {self.server_rss / 2**20:.0f} MB, "
            f"writer {self.writer_rss / 2**20:.0f} MB"
        )


def produce(bootstrap: str, topic: str, team_id: int, events: int, distinct_ids: int, start: int = 0) -> None:
    from confluent_kafka import Producer

    from plugin_server.ingestion.decode_kafka import person_partition_key

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "queue.buffering.max.messages": 1_000_000})
    now = datetime.now(timezone.utc).isoformat()
    for index in range(start, start + events):
        distinct_id = f"user-{index % distinct_ids}"
        event_uuid = str(uuid.uuid4())
        data = {"event": "$pageview", "properties": {"$current_url": "https://example.com/", "n": index}, "uuid": event_uuid}
        message = {
            "uuid": event_uuid,
            "distinct_id": distinct_id,
            "ip": "127.0.0.1",
            "site_url": "http://localhost",
            "data": json.dumps(data),
            "team_id": team_id,
            "now": now,
            "sent_at": "",
        }
        producer.produce(topic, json.dumps(message).encode(), key=person_partition_key(team_id, distinct_id))
        if index % 1000 == 0:
            producer.poll(0)
    if producer.flush(60) != 0:
        raise SystemExit("the broker did not take every benchmark event")


def stored(client: object, team_id: int) -> int:
    return int(client.execute(f"SELECT count() FROM events FINAL WHERE team_id = {int(team_id)}")[0][0])  # type: ignore[attr-defined]


def run(servers: int, args: argparse.Namespace) -> Result:
    from confluent_kafka.admin import AdminClient, NewTopic

    from plugin_server.clickhouse.client import make_client, server_features
    from plugin_server.clickhouse.messages import TOPIC_FORMATS
    from plugin_server.clickhouse.schema import create_database_sql, layout_statements
    from tests.factories import create_plugin, create_plugin_config, create_team

    team = create_team(name=f"benchmark kafka s={servers}", api_token=f"benchmark-{uuid.uuid4().hex}")
    create_plugin_config(team=team, plugin=create_plugin(organization=team.organization, source=PLUGIN))
    name = f"bench{uuid.uuid4().hex[:8]}"
    topic, prefix, database = f"{name}_ingestion", f"{name}_", f"bench_{name}"
    admin = AdminClient({"bootstrap.servers": args.kafka_hosts})
    # The consumption topic, and the produced ones (the writer subscribes to those by name).
    names = [topic] + [prefix + topic_format.topic for topic_format in TOPIC_FORMATS]
    for future in admin.create_topics([NewTopic(name, args.partitions, 1) for name in names]).values():
        future.result(30)
    client = make_client(database="default")
    client.execute(create_database_sql(database))
    for statement in layout_statements("plain", server_features(client), database):
        client.execute(statement)
    client = make_client(database=database)
    env = {
        **os.environ,
        "KAFKA_ENABLED": "true",
        "KAFKA_HOSTS": args.kafka_hosts,
        "KAFKA_CONSUMPTION_TOPIC": topic,
        "KAFKA_PREFIX": prefix,
        # A group of this run's own: the broker may hold stale members of an earlier one.
        "KAFKA_CONSUMER_GROUP": f"{name}-ingestion",
        "DISABLE_MMDB": "true",
        "CLICKHOUSE_DATABASE": database,
        "PLUGINS_RELOAD_PUBSUB_CHANNEL": f"{name}-reload",
        "WORKER_CONCURRENCY": str(args.worker_concurrency),
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "LOG_LEVEL": "warn",
        "PLUGIN_SERVER_MODE": "ingestion",
    }
    writer_command = [sys.executable, "manage.py", "run_clickhouse_writer", "--topic-prefix", prefix, "--database", database,
                      "--group", f"{name}-writer", "--session-timeout-ms", "6000"]
    writer = subprocess.Popen(writer_command, cwd=ROOT, env=env)
    processes = [subprocess.Popen([sys.executable, "manage.py", "run_plugin_server"], cwd=ROOT, env=env) for _ in range(servers)]
    try:
        produce(args.kafka_hosts, topic, team.id, WARM_UP, args.distinct_ids, start=10**9)
        deadline = time.monotonic() + 120
        while stored(client, team.id) < WARM_UP:
            if time.monotonic() > deadline or any(p.poll() is not None for p in [writer, *processes]):
                raise SystemExit("the warm-up events did not reach ClickHouse")
            time.sleep(0.2)
        server_pids = [pid for process in processes for pid in process_tree(process.pid)]
        writer_pids = process_tree(writer.pid)
        before = cpu_seconds(server_pids + writer_pids)
        server_rss, writer_rss = rss_bytes(server_pids), rss_bytes(writer_pids)
        started = time.monotonic()
        produce(args.kafka_hosts, topic, team.id, args.events, args.distinct_ids)
        produced = time.monotonic() - started
        while stored(client, team.id) < WARM_UP + args.events:
            if time.monotonic() - started > args.timeout:
                raise SystemExit(f"timed out with {stored(client, team.id) - WARM_UP} of {args.events} events in ClickHouse")
            server_pids = [pid for process in processes for pid in process_tree(process.pid)]
            server_rss, writer_rss = max(server_rss, rss_bytes(server_pids)), max(writer_rss, rss_bytes(writer_pids))
            time.sleep(0.1)
        seconds = time.monotonic() - started
        after = cpu_seconds(server_pids + writer_pids)
        server_cpu = sum(after[pid] - before.get(pid, 0.0) for pid in server_pids if pid in after)
        writer_cpu = sum(after[pid] - before.get(pid, 0.0) for pid in writer_pids if pid in after)
    finally:
        for process in [*processes, writer]:
            process.send_signal(signal.SIGTERM)
        for process in [*processes, writer]:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        make_client(database="default").execute(f"DROP DATABASE IF EXISTS {database}")
    return Result(servers, args.events, seconds, produced, server_cpu, writer_cpu, server_rss, writer_rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--distinct-ids", type=int, default=1_000)
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--worker-concurrency", type=int, default=1, help="plugin workers per server")
    parser.add_argument("--kafka-hosts", default=os.environ.get("KAFKA_HOSTS", "127.0.0.1:9092"))
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/posthog_bench_kafka")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    setup_django(args.database_url)
    lines = [measured(servers, args) for servers in args.servers]
    print("\n" + "\n".join(lines))


def measured(servers: int, args: argparse.Namespace) -> str:
    print(f"{servers} server(s): {args.events} events, {args.distinct_ids} distinct ids, {args.partitions} partitions", flush=True)
    line = run(servers, args).line()
    print("  " + line, flush=True)
    return line


if __name__ == "__main__":
    main()
