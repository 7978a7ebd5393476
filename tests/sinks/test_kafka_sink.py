"""The Kafka sink's own behaviour on the real broker: merged persons' tombstones, a ClickHouse away at delete time."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
from django.test import override_settings

from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.metrics import RecordingMetrics
from plugin_server.models import Person, Team
from plugin_server.sinks.kafka import KafkaSink
from tests.factories import create_team
from tests.sinks.sink_readers import read_topic
from tests.sinks.test_sink_contract import _producer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.kafka]

NOW = datetime(2021, 5, 17, 10, 0, tzinfo=timezone.utc)


def event(team: Team, distinct_id: str, name: str, **properties: Any) -> dict[str, Any]:
    return {"event": name, "distinct_id": distinct_id, "team_id": team.id, "uuid": str(uuidt()), "now": NOW.isoformat(),
            "properties": properties}


def test_a_merged_person_gets_a_tombstone_and_a_clickhouse_away_does_not_stop_the_batch(
    kafka_bootstrap: str, unique_name: str, recording_metrics: RecordingMetrics
) -> None:
    """alice and bob are two persons; an alias merges alice's into bob's. The merged-away person gets a
    clickhouse_person row with is_deleted 1 after its others; ClickHouse's delete fails (nothing listens on
    its port): logged and counted, the batch is stored all the same."""
    team = create_team(ingested_event=True)
    sink = KafkaSink(_producer(kafka_bootstrap), topic_prefix=f"{unique_name}-")
    ingester = Ingester(sink=sink, persons=PersonManager(lru_size=100), clock=lambda: NOW)
    ingester.ingest([event(team, "alice", "one"), event(team, "bob", "two")])
    alice = str(Person.objects.get(team_id=team.id, persondistinctid__distinct_id="alice").uuid)
    with override_settings(CLICKHOUSE_PORT=1, CLICKHOUSE_HOST="127.0.0.1"):
        result = ingester.ingest([event(team, "bob", "$create_alias", alias="alice")])
    assert len(result.stored) == 1
    assert recording_metrics.total("kafka_queue.person_delete_failed") == 1
    rows = [json.loads(value) for value in read_topic(kafka_bootstrap, sink.person_topic)]
    of_alice = [row for row in rows if row["id"] == alice]
    assert [row.get("is_deleted", 0) for row in of_alice] == [0, 1]  # created, then the tombstone, in this order
    assert not Person.objects.filter(uuid=alice).exists()
