"""Event types passed between the parts of the pipeline.

``PluginEvent`` is the plain dict a plugin sees and
that the ingester stores; it stays a dict so that it crosses process
boundaries cheaply and plugins can change it freely.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

# Keys: event, distinct_id, properties, timestamp, team_id, uuid, ip, site_url,
# now, sent_at, and $set / $set_once where present.
PluginEvent = dict[str, Any]


class SourceName(str, enum.Enum):
    """Where a message came from; also the ``source`` of a dead letter."""

    CELERY = "celery"
    KAFKA = "kafka"
    MEMORY = "memory"  # the in-memory partitioned source (tests)
    PLUGIN = "plugin"  # posthog.capture from inside a plugin


CELERY_TASK_NAME = "posthog.tasks.process_event.process_event_with_plugins"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One raw message taken off a queue, not yet decoded.

    ``token`` is the source's own handle used to acknowledge it (a Redis
    in-flight entry, a Kafka offset). ``attempts`` is how many times the
    source has handed this message out, this time included, as counted
    durably in the source's own store (so it survives the death of the
    process); ``key`` is the message's identity, the same on every delivery
    (the poison-pill contract: ``plugin_server/ingestion/sources/base.py``)."""

    payload: bytes
    token: Any
    queue: str
    attempts: int = 1
    key: str = ""
