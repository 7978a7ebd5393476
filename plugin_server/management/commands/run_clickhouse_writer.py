"""``./manage.py run_clickhouse_writer``: move the clickhouse_* topics into ClickHouse until SIGTERM / SIGINT.

Reads ``clickhouse_events_proto``, ``clickhouse_person``,
``clickhouse_person_unique_id``, ``clickhouse_session_recording_events``
and ``plugin_log_entries`` (each after ``--topic-prefix``, by default
KAFKA_PREFIX, as the server produces them) in the
consumer group CLICKHOUSE_WRITER_GROUP_ID and inserts them into the plain
layout's tables (``setup_clickhouse``) in CLICKHOUSE_DATABASE. Run as many
as there are partitions to share; each commits only what it inserted.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from plugin_server.clickhouse.client import make_client
from plugin_server.clickhouse.messages import TOPIC_FORMATS
from plugin_server.clickhouse.writer import ClickHouseWriter, WriterOptions
from plugin_server.config import get_config

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Consume the clickhouse_* topics and insert them into ClickHouse (commits after each insert)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--topic-prefix", help="put before every topic name (default KAFKA_PREFIX)")
        parser.add_argument("--database", help="database of the tables (default CLICKHOUSE_DATABASE)")
        parser.add_argument("--group", help="consumer group (default CLICKHOUSE_WRITER_GROUP_ID)")
        parser.add_argument("--batch-size", type=int, help="messages per insert at most (default CLICKHOUSE_WRITER_BATCH_SIZE)")
        parser.add_argument("--batch-ms", type=int, help="longest wait for an insert, ms (default CLICKHOUSE_WRITER_BATCH_MS)")
        parser.add_argument("--session-timeout-ms", type=int, help="consumer group session timeout (librdkafka default 45000)")

    def handle(self, *args: Any, **options: Any) -> None:
        config = get_config()
        if not config.kafka_hosts:
            raise CommandError("You must set KAFKA_HOSTS to process events from Kafka!")
        prefix = config.kafka_prefix if options["topic_prefix"] is None else options["topic_prefix"]
        overrides: dict[str, Any] = {"client.id": "plugin-server-clickhouse-writer"}
        if options["session_timeout_ms"]:
            overrides["session.timeout.ms"] = options["session_timeout_ms"]
            overrides["heartbeat.interval.ms"] = max(options["session_timeout_ms"] // 4, 100)
        writer_options = WriterOptions(
            kafka_hosts=config.kafka_hosts,
            group_id=options["group"] or config.clickhouse_writer_group_id,
            database=options["database"] or config.clickhouse_database or "default",
            dead_letter_topic=prefix + config.clickhouse_writer_dead_letter_topic,
            batch_size=options["batch_size"] or config.clickhouse_writer_batch_size,
            batch_time=(options["batch_ms"] or config.clickhouse_writer_batch_ms) / 1000,
            topics={prefix + topic_format.topic: topic_format for topic_format in TOPIC_FORMATS},
            consumer_overrides=overrides,
        )
        client = make_client(config, database=writer_options.database)
        writer = ClickHouseWriter(writer_options, client)

        def stop(signum: int, _frame: FrameType | None) -> None:
            logger.info("clickhouse writer: %s received, finishing the batch in hand", signal.Signals(signum).name)
            writer.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            writer.run()
        finally:
            client.disconnect()
