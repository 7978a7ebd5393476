"""Putting a request's events on the ingestion queue, and knowing they are there.

Postgres pipeline (:class:`CeleryQueue`): one Celery task
``posthog.tasks.process_event.process_event_with_plugins`` per event on
``PLUGINS_CELERY_QUEUE``, sent with Celery's own ``send_task`` (protocol 2,
JSON, kombu's Redis envelope, the seven arguments of
:meth:`CapturedEvent.celery_args`), all of a request's tasks pushed in one
Redis round trip (:mod:`.celery_batch`).

Kafka pipeline (``KAFKA_ENABLED``, :class:`KafkaQueue`): one message per event
on ``KAFKA_CONSUMPTION_TOPIC``, the JSON PostHog's capture produced
(``uuid``, ``distinct_id``, ``ip``, ``site_url``, ``data`` as JSON text,
``team_id``, ``now``, ``sent_at`` or ``""``), keyed by a hash of team and
distinct id so that one person's events stay in one partition, in order.

``send`` returns once every event is on the queue (Redis has the push; the
broker acknowledged every message, ``acks=all``), and raises
:class:`QueueUnavailable` otherwise, so that the view answers 503 and the SDK
sends again. Metrics: ``capture.events_queued`` (tag ``pipeline``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import redis
from kombu.exceptions import KombuError

from plugin_server.capture.batch import CapturedEvent
from plugin_server.capture.celery_batch import BatchingTransport, QuickReprAMQP
from plugin_server.config import ServerConfig, get_config
from plugin_server.events import CELERY_TASK_NAME
from plugin_server.ingestion.decode_kafka import person_partition_key
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.metrics import CAPTURE_EVENTS_QUEUED, get_metrics

logger = logging.getLogger(__name__)


class QueueUnavailable(Exception):
    """The events could not be put on the queue: none of the request counts as accepted."""


class CaptureQueue(Protocol):
    """Where accepted events go: a connection, and the queue or topic named at each send."""

    pipeline: str

    def send(self, events: Sequence[CapturedEvent], destination: str) -> None: ...

    def close(self) -> None: ...


class CeleryQueue:
    """Celery tasks on a Redis list, one push per request."""

    pipeline = "celery"

    def __init__(self, redis_url: str, timeout: float) -> None:
        from celery import Celery

        app = Celery("plugin-server-capture", broker=redis_url, set_as_current=False, amqp=QuickReprAMQP)
        app.conf.broker_transport = BatchingTransport
        app.conf.broker_connection_timeout = timeout
        app.conf.broker_transport_options = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # Connecting: one quick retry (kombu's default keeps a request waiting for minutes).
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        }
        # A request waits on this: a few quick tries, then 503 and the SDK retries.
        app.conf.task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
        self._app = app

    def send(self, events: Sequence[CapturedEvent], destination: str) -> None:
        try:
            with self._app.producer_or_acquire() as producer:
                channel = producer.channel
                with channel.batch():
                    for event in events:
                        self._app.send_task(CELERY_TASK_NAME, args=event.celery_args(), kwargs={}, queue=destination, producer=producer)
        except (KombuError, redis.RedisError, OSError) as error:
            raise QueueUnavailable(f"Redis: {error}") from error
        get_metrics().incr(CAPTURE_EVENTS_QUEUED, len(events), tags={"pipeline": self.pipeline})

    def close(self) -> None:
        self._app.close()


def kafka_message(event: CapturedEvent) -> dict[str, Any]:
    """The value PostHog's capture produced to ``events_plugin_ingestion`` for ``event``."""
    return {
        "uuid": str(uuidt()),
        "distinct_id": event.distinct_id,
        "ip": event.ip,
        "site_url": event.site_url,
        "data": json.dumps(event.data),
        "team_id": event.team_id,
        "now": event.now,
        "sent_at": event.sent_at or "",
    }


def partition_key(event: CapturedEvent) -> str:
    return person_partition_key(event.team_id, event.distinct_id)


class _Deliveries:
    """Counts the delivery reports of one request's messages (callbacks may run on any thread)."""

    def __init__(self, expected: int) -> None:
        self.pending = expected
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def report(self, error: Any, message: Any) -> None:
        with self._lock:
            self.pending -= 1
            if error is not None:
                self.errors.append(str(error))


class KafkaQueue:
    """Messages on a Kafka topic, produced together and awaited together."""

    pipeline = "kafka"

    def __init__(self, hosts: str, timeout: float, extra: dict[str, Any] | None = None) -> None:
        from confluent_kafka import Producer

        self._timeout = timeout
        settings: dict[str, Any] = {
            "bootstrap.servers": hosts,
            "linger.ms": 5,
            "acks": "all",
            "message.timeout.ms": int(timeout * 1000),
            **(extra or {}),
        }
        self._producer = Producer(settings)

    def send(self, events: Sequence[CapturedEvent], destination: str) -> None:
        from confluent_kafka import KafkaException

        deliveries = _Deliveries(len(events))
        try:
            for event in events:
                value = json.dumps(kafka_message(event)).encode("utf-8", "surrogatepass")
                self._producer.produce(destination, value=value, key=partition_key(event), on_delivery=deliveries.report)
        except (KafkaException, BufferError) as error:
            # What was produced may still arrive: a duplicate at worst, which the event uuid makes harmless.
            raise QueueUnavailable(f"Kafka: {error}") from error
        deadline = time.monotonic() + self._timeout
        while deliveries.pending > 0 and time.monotonic() < deadline:
            self._producer.poll(0.05)
        if deliveries.pending > 0 or deliveries.errors:
            raise QueueUnavailable(f"Kafka: {deliveries.pending} not delivered, errors {deliveries.errors[:3]}")
        get_metrics().incr(CAPTURE_EVENTS_QUEUED, len(events), tags={"pipeline": self.pipeline})

    def close(self) -> None:
        self._producer.flush(self._timeout)


def _kafka_security(config: ServerConfig) -> dict[str, Any]:
    from plugin_server.kafka_client import producer_settings

    # The same TLS settings as the server's other producers (KAFKA_*_B64).
    return {key: value for key, value in producer_settings().items() if key.startswith(("ssl.", "security."))}


def build_queue(config: ServerConfig) -> CaptureQueue:
    if config.kafka_enabled:
        return KafkaQueue(config.kafka_hosts or "", config.capture_queue_timeout, _kafka_security(config))
    return CeleryQueue(config.redis_url, config.capture_queue_timeout)


_queues: dict[tuple[object, ...], CaptureQueue] = {}
_queues_lock = threading.Lock()


def get_queue() -> CaptureQueue:
    """This process's connection to the pipeline in force (made on first use, one per broker)."""
    config = get_config()
    broker = config.kafka_hosts if config.kafka_enabled else config.redis_url
    key: tuple[object, ...] = (config.kafka_enabled, broker, config.capture_queue_timeout)
    queue = _queues.get(key)
    if queue is None:
        with _queues_lock:
            queue = _queues.get(key)
            if queue is None:
                queue = _queues[key] = build_queue(config)
    return queue


def queue_events(events: Sequence[CapturedEvent]) -> None:
    """Put ``events`` on ``PLUGINS_CELERY_QUEUE`` or ``KAFKA_CONSUMPTION_TOPIC``; raises :class:`QueueUnavailable`."""
    config = get_config()
    destination = (config.kafka_consumption_topic or "") if config.kafka_enabled else config.plugins_celery_queue
    get_queue().send(events, destination)


def close_queues() -> None:
    """Close this process's connections (tests; a process that stops serving capture)."""
    with _queues_lock:
        queues = list(_queues.values())
        _queues.clear()
    for queue in queues:
        queue.close()
