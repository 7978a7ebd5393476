"""A cluster-wide lock in Redis, as the original's scheduler and job consumer used.

The Redlock algorithm on one Redis: ``SET key <random token> NX PX ttl``
takes the lock; extending and releasing only act while the stored value is
still our token (compare-and-set Lua scripts), so a holder that lost the
lock (it expired while the process was paused) cannot release or extend
someone else's.

:class:`LockKeeper` runs the original's rhythm as a supervised service: try to
take the lock at start; while someone else holds it, try again every TTL/10;
once held, extend it every TTL/2; when an extension fails the lock is lost
and taking it is tried again at once. ``held`` is also false once the last
successful take or extension is a TTL old, so a keeper whose Redis went
away stops acting before another server may take over.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

import redis

from plugin_server.redis_client import get_redis
from plugin_server.service import Service

logger = logging.getLogger(__name__)

SCHEDULE_LOCK_KEY = "plugin-server:locks:schedule"
JOB_QUEUE_LOCK_KEY = "plugin-server:locks:job-queue-consumer"

# KEYS[1] = lock, ARGV[1] = token, ARGV[2] = ttl in ms.
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class RedisLock:
    """One holder's handle on a lock key; the token tells holders apart."""

    def __init__(self, key: str, ttl_seconds: float, client: redis.Redis | None = None) -> None:
        self.key = key
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.token = secrets.token_hex(16)
        self._redis = client or get_redis()
        self._extend = self._redis.register_script(_EXTEND)
        self._release = self._redis.register_script(_RELEASE)

    def acquire(self) -> bool:
        """Take the lock if nobody holds it."""
        return bool(self._redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def extend(self) -> bool:
        """Push the expiry a TTL ahead, only if the lock is still ours."""
        return bool(self._extend(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> bool:
        """Delete the lock, only if it is still ours."""
        return bool(self._release(keys=[self.key], args=[self.token]))


class LockKeeper(Service):
    """Keeps trying to hold one lock; ``held`` says whether this process may act now."""

    def __init__(
        self,
        lock: RedisLock,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(f"lock {lock.key}")
        self.lock = lock
        self._on_change = on_change
        self._clock = clock
        ttl = lock.ttl_ms / 1000
        self.retry_interval = ttl / 10
        self.extend_interval = ttl / 2
        self._valid_until = 0.0
        self._owned = False

    @property
    def held(self) -> bool:
        return self._owned and self._clock() < self._valid_until

    def step(self) -> float:
        """Take or extend the lock once; returns the seconds until the next step."""
        started = self._clock()
        try:
            if self._owned:
                ok = self.lock.extend()
                if not ok:
                    logger.warning("lost the lock %s; trying to take it again", self.lock.key)
                    self._set_owned(False)
                    ok = self.lock.acquire()
            else:
                ok = self.lock.acquire()
        except redis.RedisError:
            # Keep ``_owned``: the lock may still be ours, but ``held`` runs out on its own.
            logger.warning("lock %s: Redis is not answering", self.lock.key, exc_info=True)
            return self.retry_interval
        if ok:
            # Measured from before the call: the key may have been set as early as that.
            self._valid_until = started + self.lock.ttl_ms / 1000
            if not self._owned:
                logger.info("took the lock %s", self.lock.key)
            self._set_owned(True)
            return self.extend_interval
        return self.retry_interval

    def _set_owned(self, owned: bool) -> None:
        changed = owned != self._owned
        self._owned = owned
        if changed and self._on_change is not None:
            self._on_change(owned)

    def run(self) -> None:
        delay = self.step()
        while not self.sleep(delay):
            delay = self.step()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop keeping the lock and release it if it is still ours."""
        super().stop(timeout)

    def cleanup(self) -> None:
        if self._owned:
            try:
                self.lock.release()
            except redis.RedisError:
                logger.warning("could not release the lock %s; it expires on its own", self.lock.key, exc_info=True)
            self._set_owned(False)
