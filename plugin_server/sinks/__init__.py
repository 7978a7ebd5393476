"""Where prepared events go: Postgres now, Kafka/ClickHouse later (one Sink protocol)."""
