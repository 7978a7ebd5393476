"""``posthog.capture`` from a plugin: an event sent back into ingestion.

Postgres pipeline: the Celery task
``posthog.tasks.process_event.process_event_with_plugins`` is sent with
Celery's own ``send_task`` to ``PLUGINS_CELERY_QUEUE``, the server's own
ingestion queue. Kafka pipeline (``KAFKA_ENABLED``): the same event is
produced to ``KAFKA_CONSUMPTION_TOPIC``. Either way the event then goes
through the whole pipeline, this plugin included.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import redis
from kombu.exceptions import KombuError

import plugin_server
from plugin_server.config import get_config
from plugin_server.exceptions import MetaCallError
from plugin_server.ingestion.decode_kafka import partition_key
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.errors import iso_time
from plugin_server.plugins.meta.producer import MetaProducer

logger = logging.getLogger(__name__)

CAPTURE_TASK = "posthog.tasks.process_event.process_event_with_plugins"
MAX_EVENT_NAME_CHARS = 200
MAX_EVENT_BYTES = 1_048_576


def build_capture(ctx: PluginContext, event: object, properties: object) -> dict[str, Any]:
    """The event data a capture sends, built as the original built it."""
    if ctx.team_id is None:
        raise MetaCallError("posthog.capture: this plugin config has no team to capture for")
    if not isinstance(event, str) or not event or len(event) > MAX_EVENT_NAME_CHARS:
        raise MetaCallError(f"posthog.capture: the event name must be a string of 1 to {MAX_EVENT_NAME_CHARS} characters")
    if properties is None:
        properties = {}
    if not isinstance(properties, Mapping):
        raise MetaCallError("posthog.capture: properties must be a dict")
    rest = dict(properties)
    timestamp = rest.pop("timestamp", None) or iso_time(datetime.now(timezone.utc))
    if isinstance(timestamp, datetime):
        timestamp = iso_time(timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=timezone.utc))
    distinct_id = rest.pop("distinct_id", None) or ctx.plugin_name or f"plugin-id-{ctx.plugin_id}"
    data = {
        "distinct_id": distinct_id,
        "event": event,
        "timestamp": timestamp,
        "properties": {
            "$lib": "posthog-plugin-server",
            "$lib_version": getattr(plugin_server, "__version__", "dev"),
            "distinct_id": distinct_id,
            **rest,
        },
        "team_id": ctx.team_id,
        "uuid": str(uuidt()),
    }
    try:
        size = len(json.dumps(data).encode())
    except (TypeError, ValueError) as error:
        raise MetaCallError(f"posthog.capture: properties are not JSON-serialisable: {error}") from None
    if size > MAX_EVENT_BYTES:
        raise MetaCallError(f"posthog.capture: the event is larger than {MAX_EVENT_BYTES} bytes")
    return data


class PluginCapture:
    """Serves ``posthog.capture``; the Celery app or Kafka producer is made on first use."""

    def __init__(self, producer: MetaProducer | None = None) -> None:
        self._app: Any = None
        self._producer = producer or MetaProducer()

    def capture(self, ctx: PluginContext, event: str, properties: Mapping[str, Any] | None = None) -> None:
        data = build_capture(ctx, event, properties)
        if get_config().kafka_enabled:
            self._produce(data)
        else:
            self._send_task(data)

    def _send_task(self, data: dict[str, Any]) -> None:
        timestamp = data["timestamp"]
        args = [data["distinct_id"], None, None, data, data["team_id"], timestamp, timestamp]
        try:
            self._celery().send_task(CAPTURE_TASK, args=args, kwargs={}, queue=get_config().plugins_celery_queue)
        except (KombuError, redis.RedisError, OSError) as error:
            logger.exception("posthog.capture could not queue an event", extra={"team_id": data["team_id"]})
            raise MetaCallError(f"posthog.capture: the event could not be queued ({type(error).__name__})") from None

    def _celery(self) -> Any:
        if self._app is None:
            from celery import Celery

            self._app = Celery("plugin-server-capture", broker=get_config().redis_url, set_as_current=False)
            # A plugin call waits on this: fail fast rather than retry for minutes.
            self._app.conf.broker_connection_retry = False
            self._app.conf.broker_transport_options = {"max_retries": 1}
        return self._app

    def _produce(self, data: dict[str, Any]) -> None:
        from confluent_kafka import KafkaException

        message = {
            "distinct_id": data["distinct_id"],
            "ip": "",
            "site_url": "",
            "data": json.dumps(data),
            "team_id": data["team_id"],
            "now": data["timestamp"],
            "sent_at": data["timestamp"],
            "uuid": data["uuid"],
        }
        try:
            # Keyed by person, like every message on the consumption topic: one
            # person's events stay in one partition, in order (the original keyed by uuid).
            self._producer.produce(get_config().kafka_consumption_topic or "", partition_key(message), json.dumps(message).encode())
        except (KafkaException, BufferError) as error:
            logger.exception("posthog.capture could not produce an event", extra={"team_id": data["team_id"]})
            raise MetaCallError(f"posthog.capture: the event could not be queued ({type(error).__name__})") from None

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for produced events to be delivered; returns how many are still waiting."""
        return self._producer.flush(timeout)
