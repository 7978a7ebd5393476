"""The server's liveness in Redis, as the PostHog app reads it.

Every 5 s a daemon thread writes ``@posthog-plugin-server/ping`` (ISO time,
TTL 60 s) and ``@posthog-plugin-server/version``; at start it writes
``@posthog-plugin-server/enabled-job-queues`` (the JOB_QUEUES types, JSON
encoded). ``./manage.py healthcheck`` reads the ping key.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import cast

import redis

from plugin_server import __version__
from plugin_server.redis_client import get_redis
from plugin_server.service import Service

logger = logging.getLogger(__name__)

PING_KEY = "@posthog-plugin-server/ping"
VERSION_KEY = "@posthog-plugin-server/version"
JOB_QUEUES_KEY = "@posthog-plugin-server/enabled-job-queues"
PING_INTERVAL = 5.0
PING_TTL = 60


class StatusHeartbeat(Service):
    """Keeps the ping key fresh while the server runs (a supervised service)."""

    name = "status"

    def __init__(self, job_queues: str = "", client: redis.Redis | None = None, interval: float = PING_INTERVAL) -> None:
        super().__init__()
        self._redis = client or get_redis()
        self._job_queues = job_queues
        self._interval = interval

    def beat(self) -> None:
        """Write the ping and version keys once."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(PING_KEY, datetime.now(timezone.utc).isoformat(timespec="milliseconds"), ex=PING_TTL)
            pipe.set(VERSION_KEY, __version__)
            pipe.execute()

    def prepare(self) -> None:
        self._redis.set(JOB_QUEUES_KEY, json.dumps(self._job_queues))
        self.beat()

    def run(self) -> None:
        while not self.sleep(self._interval):
            try:
                self.beat()
            except redis.RedisError:
                logger.warning("status: could not write the ping key", exc_info=True)


def read_ping(client: redis.Redis | None = None) -> str | None:
    """The last ping written by any server, or None when none is alive."""
    value = cast(bytes | None, (client or get_redis()).get(PING_KEY))
    return value.decode() if value is not None else None
