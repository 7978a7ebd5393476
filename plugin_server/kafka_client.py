"""librdkafka settings shared by every Kafka client of the server.

- Brokers: ``KAFKA_HOSTS`` (comma-separated); empty is the original's error
  "You must set KAFKA_HOSTS to process events from Kafka!".
- Client id ``plugin-server-v<version>-<instance uuid>`` (the instance uuid
  is the one plugin log entries carry).
- TLS only when all three of ``KAFKA_CLIENT_CERT_B64``,
  ``KAFKA_CLIENT_CERT_KEY_B64`` and ``KAFKA_TRUSTED_CERT_B64`` are set (base64
  PEMs, hostname verification off, as the original); with one or two of them
  the connection stays plain and a warning says which are missing.
- Connection set-up and authentication time out after 3 s.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured

import plugin_server
from plugin_server.config import get_config

logger = logging.getLogger(__name__)

NO_HOSTS_ERROR = "You must set KAFKA_HOSTS to process events from Kafka!"
CONSUMER_GROUP = "clickhouse-ingestion"


def _pem(value: str) -> str:
    return base64.b64decode(value).decode()


def topic_name(name: str) -> str:
    """A produced topic's name with ``KAFKA_PREFIX`` in front (tests give each run its own topics)."""
    return get_config().kafka_prefix + name


def client_id() -> str:
    from plugin_server.plugins.meta.logger import server_instance_id

    return f"plugin-server-v{plugin_server.__version__}-{server_instance_id()}"


def client_settings() -> dict[str, Any]:
    """Settings every client (consumer, producer) starts from; raises ImproperlyConfigured without KAFKA_HOSTS."""
    config = get_config()
    hosts = (config.kafka_hosts or "").strip()
    if not hosts:
        raise ImproperlyConfigured(NO_HOSTS_ERROR)
    settings: dict[str, Any] = {
        "bootstrap.servers": hosts,
        "client.id": client_id(),
        "socket.connection.setup.timeout.ms": 3000,
    }
    certificates = {
        "ssl.certificate.pem": config.kafka_client_cert_b64,
        "ssl.key.pem": config.kafka_client_cert_key_b64,
        "ssl.ca.pem": config.kafka_trusted_cert_b64,
    }
    present = {key: value for key, value in certificates.items() if value}
    if len(present) == len(certificates):
        settings["security.protocol"] = "ssl"
        settings["ssl.endpoint.identification.algorithm"] = "none"
        settings.update({key: _pem(value) for key, value in present.items()})
    elif present:
        logger.warning(
            "Kafka TLS needs all of KAFKA_CLIENT_CERT_B64, KAFKA_CLIENT_CERT_KEY_B64 and KAFKA_TRUSTED_CERT_B64;"
            " only %d are set, connecting without TLS",
            len(present),
        )
    return settings


def consumer_settings(group_id: str = CONSUMER_GROUP, **overrides: Any) -> dict[str, Any]:
    """An ingestion consumer: offsets stored and committed by hand, read committed only.

    The session timeout is ``KAFKA_SESSION_TIMEOUT_MS``: how long a killed
    server's partitions wait before the group hands them to the others."""
    config = get_config()
    settings = client_settings()
    settings.update(
        {
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": config.kafka_session_timeout_ms,
            "heartbeat.interval.ms": max(config.kafka_session_timeout_ms // 4, 100),
            # Sent as the JoinGroup's rebalance timeout: a rebalance waiting on a member that
            # never rejoins ends after it (librdkafka requires it ≥ the session timeout).
            "max.poll.interval.ms": max(config.kafka_rebalance_timeout_ms, config.kafka_session_timeout_ms),
            "fetch.wait.max.ms": 100,
        }
    )
    settings.update(overrides)
    return settings


def producer_settings() -> dict[str, Any]:
    """A producer that retries like the original (10 retries, 1 s apart) and never writes a message twice."""
    settings = client_settings()
    settings.update(
        {
            "enable.idempotence": True,
            "retries": 10,
            "retry.backoff.ms": 1000,
            "linger.ms": 5,
            "message.timeout.ms": 30_000,
            "compression.type": "lz4",
        }
    )
    return settings
