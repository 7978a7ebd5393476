"""acceptance.md "End to end" (ClickHouse): the Kafka pipeline's whole chain on the real broker and ClickHouse.

Config 39's ``posthog.capture`` produces to this test's consumption topic;
the Consumer takes it with the real KafkaSource, runs the plugin in a real
worker, stores persons in Postgres and produces the event to the ClickHouse
topics with the KafkaSink; the ClickHouse writer moves them into this test's
database, where the test reads them (``FINAL``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.dlq import DeadLetterStore
from plugin_server.ingestion.dlq_topic import DeadLetterTopic
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.sources.kafka import KafkaSource
from plugin_server.sinks.kafka import KafkaSink
from tests.acceptance.test_e2e_postgres import E2E_PLUGIN, Pipeline, plugin_with_pool
from tests.kafka_pipeline import KafkaPipeline, kafka_pipeline  # noqa: F401 -- the fixture
from tests.manage_process import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.kafka, pytest.mark.clickhouse, pytest.mark.slow]


class KafkaChain(Pipeline):
    def drain_until(self, done: Callable[[], bool], what: str) -> None:
        """Run the loop (bounded) until ``done``: the writer moves the topics to ClickHouse meanwhile."""

        def step() -> bool:
            self.consumer.run_once()
            self.host.flush()
            return done()

        wait_for(step, 60, what)


@pytest.fixture
def chain(kafka_pipeline: KafkaPipeline, redis_client: redis.Redis) -> Iterator[KafkaChain]:
    config, host, pool = plugin_with_pool(E2E_PLUGIN, redis_client)
    source = KafkaSource(kafka_pipeline.consumption_topic, group=f"{kafka_pipeline.prefix}ingestion")
    source.start()
    consumer = Consumer(
        source,
        Ingester(sink=KafkaSink()),
        pool,
        dead_letters=DeadLetterStore(topic=DeadLetterTopic()),
        options=ConsumerOptions.from_settings(poll_timeout=0.3, retry_backoff=0.0, retry_backoff_max=0.0, batch_size=10),
    )
    yield KafkaChain(config, kafka_pipeline.consumption_topic, host, consumer)
    source.close()
    pool.stop()
    host.close()


def test_event_captured_processed_ingested(chain: KafkaChain, kafka_pipeline: KafkaPipeline) -> None:
    """A captured `custom event` is processed by the plugin, is in ClickHouse once, and then seen by on_event."""
    event_uuid = str(uuid.uuid4())
    chain.capture("custom event", {"name": "haha", "uuid": event_uuid})
    team_id = chain.config.team_id
    chain.drain_until(lambda: len(kafka_pipeline.events(team_id)) == 1, "the event in ClickHouse")
    [event] = kafka_pipeline.events(team_id)
    assert event["event"] == "custom event"
    assert event["properties"]["processed"] == "hell yes"
    assert event["properties"]["upperUuid"] == event_uuid.upper()
    assert event["elements_chain"] == ""
    assert chain.test_log() == [["processEvent"], ["onEvent", "custom event"]]
    # The person of the plugin's distinct id, mirrored from Postgres.
    distinct_ids = kafka_pipeline.distinct_ids(team_id)
    assert list(distinct_ids) == [event["distinct_id"]]
    assert set(kafka_pipeline.persons(team_id)) == set(distinct_ids.values())


def test_snapshot_captured_processed_ingested(chain: KafkaChain, kafka_pipeline: KafkaPipeline) -> None:
    """A captured $snapshot skips process_event; its data reaches session_recording_events as sent."""
    chain.capture("$snapshot", {"$session_id": "1234abc", "$snapshot_data": "yes way"})
    team_id = chain.config.team_id
    chain.drain_until(lambda: len(kafka_pipeline.recordings(team_id)) == 1, "the recording in ClickHouse")
    [(session_id, snapshot_data)] = kafka_pipeline.recordings(team_id)
    assert (session_id, json.loads(snapshot_data)) == ("1234abc", "yes way")
    assert chain.test_log() == [["onSnapshot", "$snapshot"]]


def test_console_logging_is_persistent(chain: KafkaChain, kafka_pipeline: KafkaPipeline) -> None:
    """The plugin's info line during processing is one INFO row of ClickHouse's plugin_log_entries."""
    chain.capture("custom event", {"name": "haha", "uuid": str(uuid.uuid4())})
    chain.drain_until(lambda: any("amogus" in message for _, message in kafka_pipeline.log_entries(chain.config.id)), "the log entry")
    assert [entry for entry in kafka_pipeline.log_entries(chain.config.id) if "amogus" in entry[1]] == [("INFO", "amogus")]
