"""``./manage.py setup_clickhouse``: create the ClickHouse tables of the Kafka pipeline.

``--layout plain`` (default): ReplacingMergeTree tables that ``manage.py
run_clickhouse_writer`` fills. ``--layout posthog``: the same tables fed by
Kafka-engine tables and materialised views (ClickHouse reads the brokers
itself; it needs the Protobuf format, and ``events.proto`` in its
``format_schemas`` folder). Types follow the server's version. Safe to run
again: everything is ``IF NOT EXISTS``. ``--print`` shows the statements
instead (with ``--server-version`` it does not connect at all).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from plugin_server.clickhouse.client import ServerFeatures, make_client, server_features
from plugin_server.clickhouse.schema import LAYOUTS, SchemaError, create_database_sql, layout_statements
from plugin_server.config import get_config


class Command(BaseCommand):
    help = "Create the ClickHouse tables (events, person, person_distinct_id, session_recording_events, plugin_log_entries)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--layout", choices=LAYOUTS, default="plain", help="plain (the writer fills them) or posthog (Kafka engine)")
        parser.add_argument("--database", help="database to create them in (default CLICKHOUSE_DATABASE)")
        parser.add_argument("--kafka-hosts", help="posthog layout: the brokers as ClickHouse reaches them (default KAFKA_HOSTS)")
        parser.add_argument("--topic-prefix", help="put before every topic name (default KAFKA_PREFIX)")
        parser.add_argument("--group", default="clickhouse", help="posthog layout: consumer group prefix of the Kafka tables")
        parser.add_argument("--print", action="store_true", dest="print_only", help="print the statements, run nothing")
        parser.add_argument("--server-version", help="with --print: choose types for this version instead of asking the server")

    def handle(self, *args: Any, **options: Any) -> None:
        config = get_config()
        database = options["database"] or config.clickhouse_database or "default"
        client = None
        if options["server_version"]:
            if not options["print_only"]:
                raise CommandError("--server-version only goes with --print")
            features = ServerFeatures.of_version(options["server_version"])
        else:
            client = make_client(config, database="default")
            features = server_features(client)
        try:
            statements = [create_database_sql(database)] + layout_statements(
                options["layout"],
                features,
                database,
                kafka_hosts=options["kafka_hosts"] or config.kafka_hosts or "",
                topic_prefix=config.kafka_prefix if options["topic_prefix"] is None else options["topic_prefix"],
                group=options["group"],
            )
        except SchemaError as error:
            raise CommandError(str(error)) from None
        if options["print_only"]:
            self.stdout.write(";\n\n".join(statements) + ";")
            return
        assert client is not None
        try:
            for statement in statements:
                client.execute(statement)
        finally:
            client.disconnect()
        self.stdout.write(
            f"setup_clickhouse: {options['layout']} layout in {database} on ClickHouse {features.version}"
            f" ({'DateTime64' if features.datetime64 else 'DateTime, whole seconds'})"
        )
