"""The Kafka pipeline of one test: its topics, its ClickHouse database, a writer, and the read model.

A test gets its own consumption topic (with partitions), its own produced
topics (the ``clickhouse_*`` names after a unique ``KAFKA_PREFIX``), its own
ClickHouse database (plain layout) and a ClickHouse writer on a thread
moving the topics into it. The read model is ClickHouse read with ``FINAL``,
as docs/kafka.md tells a reader to.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from typing import TYPE_CHECKING, Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings

from tests.clickhouse.test_writer import Topics, WriterThread
from tests.kafka_helpers import create_topic
from tests.manage_process import tests_database_url

if TYPE_CHECKING:
    from clickhouse_driver import Client


@dataclass
class KafkaPipeline:
    bootstrap: str
    topics: Topics  # the produced topics (prefix + clickhouse_* names), created
    consumption_topic: str
    database: str
    client: Client
    writer: WriterThread

    @property
    def prefix(self) -> str:
        return self.topics.prefix

    @property
    def consumer_group(self) -> str:
        """A group of this test's own: Tansu keeps a shared group's dead members and may stop assigning it."""
        return self.prefix + "ingestion"

    def settings(self) -> dict[str, Any]:
        """The Django settings of a server of this pipeline (in this process)."""
        return {
            "KAFKA_ENABLED": True,
            "KAFKA_HOSTS": self.bootstrap,
            "KAFKA_CONSUMPTION_TOPIC": self.consumption_topic,
            "KAFKA_PREFIX": self.prefix,
            "KAFKA_CONSUMER_GROUP": self.consumer_group,
            "CLICKHOUSE_DATABASE": self.database,
        }

    def server_environment(self, **extra: str) -> dict[str, str]:
        """The environment of a ``run_plugin_server`` subprocess of this pipeline."""
        return {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "settings.base",
            "DATABASE_URL": tests_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "PLUGINS_RELOAD_PUBSUB_CHANNEL": f"{self.prefix}reload",
            "KAFKA_ENABLED": "true",
            "KAFKA_HOSTS": self.bootstrap,
            "KAFKA_CONSUMPTION_TOPIC": self.consumption_topic,
            "KAFKA_PREFIX": self.prefix,
            "KAFKA_CONSUMER_GROUP": self.consumer_group,
            "KAFKA_SESSION_TIMEOUT_MS": "2000",
            # A rebalance the broker leaves waiting for a member that is gone ends in 15 s, not 60.
            "KAFKA_REBALANCE_TIMEOUT_MS": "15000",
            "CLICKHOUSE_HOST": str(settings.CLICKHOUSE_HOST),
            "CLICKHOUSE_PORT": str(settings.CLICKHOUSE_PORT),
            "CLICKHOUSE_DATABASE": self.database,
            "WORKER_CONCURRENCY": "1",
            "INGESTION_POLL_TIMEOUT": "0.2",
            "INGESTION_BATCH_SIZE": "200",
            "DISABLE_WEB": "true",
            "LOG_LEVEL": "info",  # shown only when a test fails: what each server did
            **extra,
        }

    # --- the read model ---------------------------------------------------------------
    def events(self, team_id: int) -> list[dict[str, Any]]:
        rows = self.client.execute(
            "SELECT toString(uuid), event, properties, timestamp, distinct_id, elements_chain FROM events FINAL"
            f" WHERE team_id = {int(team_id)} ORDER BY timestamp, toString(uuid)"
        )
        return [
            {"uuid": row[0], "event": row[1], "properties": json.loads(row[2]), "timestamp": row[3], "distinct_id": row[4],
             "elements_chain": row[5]}
            for row in rows
        ]

    def event_rows(self, team_id: int) -> int:
        """Rows before deduplication (a re-delivered event may be there twice until merged)."""
        return int(self.client.execute(f"SELECT count() FROM events WHERE team_id = {int(team_id)}")[0][0])

    def persons(self, team_id: int) -> dict[str, dict[str, Any]]:
        rows = self.client.execute(
            "SELECT toString(id), properties, is_identified FROM person FINAL"
            f" WHERE team_id = {int(team_id)} AND is_deleted = 0"
        )
        return {row[0]: {"properties": json.loads(row[1]), "is_identified": bool(row[2])} for row in rows}

    def distinct_ids(self, team_id: int) -> dict[str, str]:
        rows = self.client.execute(
            "SELECT distinct_id, toString(person_id) FROM person_distinct_id FINAL"
            f" WHERE team_id = {int(team_id)} AND is_deleted = 0"
        )
        return dict(rows)

    def recordings(self, team_id: int) -> list[tuple[str, str]]:
        return list(
            self.client.execute(f"SELECT session_id, snapshot_data FROM session_recording_events FINAL WHERE team_id = {int(team_id)}")
        )

    def log_entries(self, plugin_config_id: int) -> list[tuple[str, str]]:
        return list(
            self.client.execute(
                f"SELECT type, message FROM plugin_log_entries FINAL WHERE plugin_config_id = {int(plugin_config_id)}"
            )
        )


@pytest.fixture
def kafka_pipeline(
    request: pytest.FixtureRequest, kafka_bootstrap: str, clickhouse_client: Client, unique_name: str
) -> Iterator[KafkaPipeline]:
    """Topics, a ClickHouse database with the plain layout and a writer moving them; settings for in-process parts."""
    partitions = getattr(request, "param", 4)
    prefix = unique_name.replace("-", "_") + "_"
    topics = Topics(kafka_bootstrap, prefix)
    consumption = prefix + "events_plugin_ingestion"
    create_topic(kafka_bootstrap, consumption, partitions)
    database = str(clickhouse_client.connection.database)
    call_command("setup_clickhouse", database=database, stdout=StringIO())
    writer = WriterThread(topics.options(database, f"{prefix}writer"))
    pipeline = KafkaPipeline(kafka_bootstrap, topics, consumption, database, clickhouse_client, writer)
    with override_settings(**pipeline.settings()):
        yield pipeline
    writer.stop()
    from plugin_server.sinks.kafka_producer import close_shared_producer

    close_shared_producer()  # made for this test's settings
