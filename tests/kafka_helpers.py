"""Putting messages on the real broker the way PostHog's capture endpoint does (spec: ingestion.md §1.2), taking them back."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from plugin_server.events import Delivery
from plugin_server.ingestion.decode_kafka import partition_key
from plugin_server.ingestion.sources.base import Source
from plugin_server.ingestion.uuidt import uuidt


def take(source: Source, count: int, timeout: float = 20.0) -> list[Delivery]:
    """Poll ``source`` until ``count`` messages came (or the time is up)."""
    deadline = time.monotonic() + timeout
    taken: list[Delivery] = []
    while len(taken) < count and time.monotonic() < deadline:
        taken.extend(source.poll(count - len(taken), timeout=0.5))
    return taken


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create ``topic`` with ``partitions`` partitions (it must not exist)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the answer comes
    futures = admin.create_topics([NewTopic(topic, partitions, 1)])
    futures[topic].result(timeout=30)


def capture_message(
    team_id: int,
    distinct_id: str,
    event: str = "$pageview",
    properties: dict[str, Any] | None = None,
    *,
    event_uuid: str | None = None,
    now: datetime | None = None,
    **data: Any,
) -> dict[str, Any]:
    """The JSON message Django's capture endpoint produces: ``data`` is double-encoded."""
    moment = (now or datetime.now(timezone.utc)).isoformat()
    event_uuid = event_uuid or str(uuidt())
    raw = {"event": event, "properties": properties or {}, "distinct_id": distinct_id, "uuid": event_uuid, **data}
    return {
        "uuid": event_uuid,
        "distinct_id": distinct_id,
        "ip": "127.0.0.1",
        "site_url": "http://localhost",
        "data": json.dumps(raw),
        "team_id": team_id,
        "now": moment,
        "sent_at": "",
    }


def produce(bootstrap: str, topic: str, messages: Iterable[dict[str, Any] | bytes], key_by_person: bool = True) -> int:
    """Produce messages (dicts are JSON-encoded), keyed by person like the capture endpoint; waits for the broker."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    count = 0
    for message in messages:
        if isinstance(message, bytes):
            producer.produce(topic, value=message)
        else:
            key = partition_key(message) if key_by_person else None
            producer.produce(topic, value=json.dumps(message).encode(), key=key)
        count += 1
        if count % 10_000 == 0:
            producer.flush()
    assert producer.flush(30) == 0
    return count
