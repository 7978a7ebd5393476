"""STALENESS_RESTART_SECONDS: restart a server that stopped ingesting.

When the setting is above 0 and the server's role ingests, this service
looks at the last activity (:mod:`plugin_server.activity`: a batch's
plugins, its storage, its ``on_event``, or the server's start) every
``interval`` seconds. Once nothing happened for longer than the limit, and
the last activity is not the one already alerted about, it:

1. logs ``Plugin Server has not ingested events for over <N> seconds!
   Rebooting.`` at ERROR with the original's extras (``instanceId``,
   ``lastActivity`` ISO time, ``lastActivityType``, ``piscina`` pool stats as
   JSON), which Sentry receives as an event when ``SENTRY_DSN`` is set;
2. counts ``alerts.stale_plugin_server_restarted``;
3. asks the server to stop with exit code 1 (``on_stale``): a graceful
   stop bounded by ``SHUTDOWN_TIMEOUT``, after which the process exits 1 so
   that its supervisor (systemd, Kubernetes, ...) starts a fresh one. The
   original sent itself SIGTERM (and SIGKILL two minutes later); the
   shutdown watchdog plays the SIGKILL's part here.

Its check interval is a tenth of the limit, between 1 s and 60 s (the
original meant to check every minute but counted in milliseconds).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from plugin_server.activity import ACTIVITY, Activity
from plugin_server.metrics import ALERTS_STALE_RESTARTED, get_metrics
from plugin_server.service import Service

logger = logging.getLogger(__name__)

STALE_MESSAGE = "Plugin Server has not ingested events for over {seconds} seconds! Rebooting."


class StalenessWatch(Service):
    """Stops the server (exit 1) after ``limit`` seconds without activity."""

    name = "staleness"

    def __init__(
        self,
        limit: float,
        on_stale: Callable[[], None],
        instance_id: str = "",
        pool_stats: Callable[[], Mapping[str, Any]] = dict,
        activity: Activity = ACTIVITY,
        interval: float | None = None,
    ) -> None:
        super().__init__()
        self.limit = limit
        self._on_stale = on_stale
        self._instance_id = instance_id
        self._pool_stats = pool_stats
        self._activity = activity
        self.interval = interval if interval is not None else min(max(limit / 10, 1.0), 60.0)
        self._alerted_at: float | None = None

    def check(self) -> bool:
        """Alert and stop the server when stale; True when it did."""
        snapshot = self._activity.snapshot()
        if time.time() - snapshot.last_at <= self.limit or snapshot.last_at == self._alerted_at:
            return False
        self._alerted_at = snapshot.last_at
        seconds = f"{self.limit:g}"
        logger.error(
            STALE_MESSAGE.format(seconds=seconds),
            extra={
                "instanceId": self._instance_id,
                "lastActivity": datetime.fromtimestamp(snapshot.last_at, timezone.utc).isoformat(),
                "lastActivityType": snapshot.last_type,
                "piscina": json.dumps(dict(self._pool_stats())),
            },
        )
        get_metrics().incr(ALERTS_STALE_RESTARTED)
        self._on_stale()
        return True

    def run(self) -> None:
        while not self.sleep(self.interval):
            self.check()
