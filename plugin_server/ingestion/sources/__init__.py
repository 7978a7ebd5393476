"""Where ingestion messages come from: one :class:`~.base.Source` protocol, one module per queue."""

from __future__ import annotations

from plugin_server.events import SourceName
from plugin_server.ingestion.sources.base import Source


def source_for_replay(name: str) -> Source:
    """A source of kind ``name`` able to ``replay`` dead letters (not started: it takes nothing).

    A letter from ``plugin`` (a ``posthog.capture`` that failed) goes back the
    way captures go: the Celery queue, or the consumption topic with Kafka."""
    from plugin_server.config import get_config

    if name == SourceName.PLUGIN.value:
        name = SourceName.KAFKA.value if get_config().kafka_enabled else SourceName.CELERY.value
    if name == SourceName.CELERY.value:
        from plugin_server.ingestion.sources.celery import CelerySource

        return CelerySource()
    if name == SourceName.KAFKA.value:
        from plugin_server.ingestion.sources.kafka import KafkaSource

        return KafkaSource()
    raise ValueError(f"no way to replay dead letters of source {name!r}")
