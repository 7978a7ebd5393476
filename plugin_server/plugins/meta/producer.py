"""The Kafka producer of the meta host (Kafka pipeline only).

``posthog.capture`` produces to ``KAFKA_CONSUMPTION_TOPIC`` and the plugin
log writer to ``plugin_log_entries`` (spec: ingestion.md §8). One producer
serves both, made on first use; librdkafka batches messages itself
(``linger.ms``), and :meth:`MetaProducer.flush` waits for delivery at
shutdown. Delivery failures are logged and counted
(``meta.kafka_delivery_failed``): both uses are fire-and-forget.
"""

from __future__ import annotations

import base64
import logging
import threading
from typing import Any

from plugin_server.config import get_config
from plugin_server.metrics import META_KAFKA_DELIVERY_FAILED, get_metrics

logger = logging.getLogger(__name__)


def _pem(value: str | None) -> str | None:
    return base64.b64decode(value).decode() if value else None


def producer_settings() -> dict[str, Any]:
    """librdkafka settings from KAFKA_HOSTS and the KAFKA_*_B64 certificates."""
    config = get_config()
    settings: dict[str, Any] = {
        "bootstrap.servers": config.kafka_hosts,
        "linger.ms": 20,
        "message.timeout.ms": 30_000,
    }
    certificates = {
        "ssl.certificate.pem": _pem(config.kafka_client_cert_b64),
        "ssl.key.pem": _pem(config.kafka_client_cert_key_b64),
        "ssl.ca.pem": _pem(config.kafka_trusted_cert_b64),
    }
    if any(certificates.values()):
        settings["security.protocol"] = "ssl"
        settings.update({key: value for key, value in certificates.items() if value})
    return settings


def _delivered(error: Any, message: Any) -> None:
    # Fire-and-forget for the caller, but a lost message must leave a trace.
    if error is not None:
        logger.error("meta: message not delivered to Kafka: %s", error, extra={"topic": message.topic()})
        get_metrics().incr(META_KAFKA_DELIVERY_FAILED)


class MetaProducer:
    """A confluent-kafka producer made on first use; thread-safe."""

    def __init__(self) -> None:
        self._producer: Any = None
        self._lock = threading.Lock()

    def produce(self, topic: str, key: str, value: bytes) -> None:
        """Queue one message; raises BufferError (queue full) or KafkaException."""
        with self._lock:
            if self._producer is None:
                from confluent_kafka import Producer

                self._producer = Producer(producer_settings())
            producer = self._producer
        producer.produce(topic, key=key, value=value, on_delivery=_delivered)
        # Serve delivery callbacks without blocking.
        producer.poll(0)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait for queued messages; returns how many are still undelivered."""
        producer = self._producer
        return 0 if producer is None else int(producer.flush(timeout))
