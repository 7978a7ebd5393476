"""ClickHouse: the Kafka pipeline's read model (docs/clickhouse.md).

- :mod:`.proto` and :mod:`.messages`: the messages of the ``clickhouse_*``
  and ``plugin_log_entries`` topics, built by the Kafka sink and read by the
  writer (one definition for both).
"""
