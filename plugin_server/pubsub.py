"""Plugin reloads over Redis pub/sub.

The PostHog app (and this server's admin) publishes on
``PLUGINS_RELOAD_PUBSUB_CHANNEL`` whenever a plugin or plugin config changes;
every running server listens and reloads its plugins. The payload is ignored.

:func:`publish_reload` is the sending side. :class:`ReloadListener` is the
receiving side: a supervised service (:mod:`plugin_server.service`) on a dedicated connection that calls a
callback for each message, and reconnects, with backoff, when Redis goes away.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import cast

import redis
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.retry import Retry

from plugin_server.config import get_config
from plugin_server.redis_client import get_redis
from plugin_server.service import Service

logger = logging.getLogger(__name__)

# What PostHog's own reload_plugins_on_workers() publishes.
RELOAD_MESSAGE = "reload!"

# Messages drained into one callback call, so a burst of changes costs one
# reload, without letting a flood keep the listener from ever calling back.
MAX_COALESCED = 1000


def publish_reload(client: redis.Redis | None = None) -> int:
    """Ask every running plugin server to reload its plugins.

    Returns the number of listeners that received the message (0 when no
    server is running, which is not an error: a starting server loads the
    current state anyway)."""
    channel = get_config().plugins_reload_pubsub_channel
    # The synchronous client answers an int (the stubs also allow an awaitable).
    receivers = cast(int, (client or get_redis()).publish(channel, RELOAD_MESSAGE))
    logger.info("Published a plugin reload on %s to %d listeners", channel, receivers, extra={"channel": channel})
    return receivers


class ReloadListener(Service):
    """Calls ``callback()`` for each message on the reload channel.

    Run it as a daemon thread with :meth:`start` / :meth:`stop`, or drive it
    with bounded :meth:`poll` calls. Messages already waiting when one
    arrives are drained and coalesced into a single callback call. The
    callback runs on the listener's thread; an exception from it is logged
    and the listener goes on.

    When the connection drops, the listener reconnects with exponential
    backoff (``reconnect_delay`` doubling up to ``max_reconnect_delay``).
    A reload published while it was disconnected is lost by pub/sub, so
    after each re-subscription it calls the callback once
    (``reload_on_reconnect``); reloading is idempotent. Watch the
    ``Reload listener lost Redis`` warnings to spot a flapping connection.
    """

    def __init__(
        self,
        callback: Callable[[], None],
        *,
        channel: str | None = None,
        url: str | None = None,
        reconnect_delay: float = 0.5,
        max_reconnect_delay: float = 30.0,
        reload_on_reconnect: bool = True,
    ) -> None:
        super().__init__("reload listener")
        config = get_config()
        self.channel = channel or config.plugins_reload_pubsub_channel
        self.url = url or config.redis_url
        # A per-listener client name lets an operator (or a test) find and
        # kill exactly this connection with CLIENT LIST / CLIENT KILL.
        self.client_name = f"plugin-server-reload-{uuid.uuid4().hex[:12]}"
        self._callback = callback
        self._reconnect_delay = reconnect_delay
        self._max_reconnect_delay = max_reconnect_delay
        self._reload_on_reconnect = reload_on_reconnect
        self._pubsub: PubSub | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._subscriptions = 0
        self._subscribed = threading.Event()

    # --- service ---------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, close the connection and join the thread."""
        super().stop(timeout)

    def cleanup(self) -> None:
        self._disconnect()

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until the channel subscription is confirmed (or timeout)."""
        return self._subscribed.wait(timeout)

    def run(self) -> None:
        while not self.stopping:
            self.poll(timeout=1.0)
        self._disconnect()

    def recover(self) -> None:
        self._disconnect()

    # --- one step -------------------------------------------------------------

    def poll(self, timeout: float) -> int:
        """Connect if needed, wait up to ``timeout`` for messages, call back.

        Returns how many times the callback was called (0 or 1)."""
        if self._pubsub is None and not self._connect(timeout):
            return 0
        assert self._pubsub is not None
        try:
            message = self._pubsub.get_message(timeout=timeout)
            if message is None:
                return 0
            reload = self._is_reload(message)
            for _ in range(MAX_COALESCED):
                message = self._pubsub.get_message(timeout=0)
                if message is None:
                    break
                reload = self._is_reload(message) or reload
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._lost(error)
            return 0
        if not reload:
            return 0
        self._call_back()
        return 1

    def _is_reload(self, message: dict[str, object]) -> bool:
        if message["type"] == "message":
            return True
        if message["type"] == "subscribe":
            self._subscriptions += 1
            self._failures = 0
            self._subscribed.set()
            logger.info("Reload listener subscribed to %s", self.channel, extra={"channel": self.channel})
            return self._subscriptions > 1 and self._reload_on_reconnect
        return False

    def _call_back(self) -> None:
        logger.info("Reloading plugins on a message from %s", self.channel, extra={"channel": self.channel})
        try:
            self._callback()
        except Exception:
            # A failed reload must not end the listening: the next message retries it.
            logger.exception("Plugin reload callback failed", extra={"channel": self.channel})

    def _connect(self, timeout: float) -> bool:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            self._stopping.wait(min(wait, timeout))
            return False
        try:
            client = redis.Redis.from_url(
                self.url,
                client_name=self.client_name,
                socket_connect_timeout=5,
                socket_keepalive=True,
                # Pings an idle subscription, so a silently dead peer is noticed.
                health_check_interval=30,
                # We reconnect ourselves, with backoff and a reload afterwards.
                retry=Retry(NoBackoff(), 0),
            )
            pubsub = client.pubsub()  # type: ignore[no-untyped-call]  # untyped in redis-py
            pubsub.subscribe(self.channel)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._lost(error)
            return False
        self._pubsub = pubsub
        return True

    def _lost(self, error: Exception) -> None:
        self._disconnect()
        delay = min(self._reconnect_delay * (2**self._failures), self._max_reconnect_delay)
        self._failures += 1
        self._retry_at = time.monotonic() + delay
        logger.warning(
            "Reload listener lost Redis (%s); reconnecting in %.1fs",
            error,
            delay,
            extra={"channel": self.channel, "failures": self._failures},
        )

    def _disconnect(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except (redis.RedisError, OSError):
                # The connection is already gone; nothing more to release.
                pass
