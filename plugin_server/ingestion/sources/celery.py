"""The Celery source: tasks pushed by PostHog's capture endpoint onto a Redis list.

PostHog (kombu's Redis transport) ``LPUSH``es one JSON envelope per task onto
the list ``PLUGINS_CELERY_QUEUE``; the original popped them one by one and
never acknowledged, so a crash lost whatever it held. This source takes them
in bulk and reliably instead:

- ``poll`` runs one Lua script that pops up to N messages (and at most a
  byte budget) off the list and files each under a sequence number in this
  consumer's own in-flight hash, in the same atomic step. One round trip per
  batch. When the list is empty it blocks on ``BLMOVE`` into a one-element
  landing list of this consumer, so an idle server neither spins nor sleeps.
- ``ack`` deletes the batch's entries from the in-flight hash (one ``HDEL``).
- Every consumer has a random id, is listed in a set, and keeps a heartbeat
  key alive (a thread refreshes it every third of
  ``CELERY_CONSUMER_HEARTBEAT_TTL``). At start and then once per TTL, any
  listed consumer whose heartbeat is gone has its in-flight and landing
  messages pushed back onto the list, oldest first to be taken again. So a
  SIGKILLed server's batch is delivered again; the event uuid makes that
  harmless downstream.
- ``close`` puts this consumer's own unacknowledged messages back at once.

Keys (all under ``@posthog-plugin-server/celery/<queue>/``): ``consumers``
(set), ``alive/<id>``, ``inflight/<id>`` (hash), ``landing/<id>`` (list).

Metrics: ``ingestion.messages_polled``, ``ingestion.source.recovered``.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import redis

from plugin_server.app_settings import app_setting
from plugin_server.events import Delivery, SourceName
from plugin_server.exceptions import RetriableError
from plugin_server.metrics import INGESTION_MESSAGES_POLLED, INGESTION_SOURCE_RECOVERED, get_metrics
from plugin_server.redis_client import get_redis

logger = logging.getLogger(__name__)

# KEYS: queue, landing, inflight, alive, consumers
# ARGV: max messages, max bytes, first sequence number, consumer id, heartbeat ttl (ms)
# Moves messages off the queue into the in-flight hash; returns them in queue order.
_TAKE_SCRIPT = """
redis.call('SET', KEYS[4], '1', 'PX', ARGV[5])
redis.call('SADD', KEYS[5], ARGV[4])
local max, budget, seq = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out, n, size = {}, 0, 0
while n < max and size < budget do
  local msg = redis.call('RPOP', KEYS[2])
  if not msg then msg = redis.call('RPOP', KEYS[1]) end
  if not msg then break end
  redis.call('HSET', KEYS[3], seq + n, msg)
  n = n + 1
  out[n] = msg
  size = size + string.len(msg)
end
return out
"""

# KEYS: queue, landing, inflight
# Puts every message of one consumer back on the queue so that the oldest is
# taken first (the queue is consumed from its right end), then forgets them.
_REQUEUE_SCRIPT = """
local moved = 0
local landing = redis.call('LRANGE', KEYS[2], 0, -1)
for i = #landing, 1, -1 do
  redis.call('RPUSH', KEYS[1], landing[i])
  moved = moved + 1
end
local fields = redis.call('HKEYS', KEYS[3])
local seqs = {}
for i, f in ipairs(fields) do seqs[i] = tonumber(f) end
table.sort(seqs)
for i = #seqs, 1, -1 do
  redis.call('RPUSH', KEYS[1], redis.call('HGET', KEYS[3], seqs[i]))
  moved = moved + 1
end
redis.call('DEL', KEYS[2], KEYS[3])
return moved
"""


@contextmanager
def _redis_away_is_retriable() -> Iterator[None]:
    # A Redis restart or network blip is a service away, not a bug: the loop
    # retries with backoff instead of dying.
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise RetriableError(f"Redis unavailable: {error}") from error


class CelerySource:
    """Celery tasks from a Redis list, taken in bulk, acknowledged after the write.

    Tuning: ``max_messages`` and ``max_bytes`` bound one batch (and so the
    server's memory whatever the queue length); ``heartbeat_ttl`` is how long
    a dead server's messages wait before another consumer re-delivers them.
    """

    name = SourceName.CELERY

    def __init__(
        self,
        queue: str | None = None,
        client: redis.Redis | None = None,
        heartbeat_ttl: float | None = None,
        max_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.queue: str = queue or app_setting("PLUGINS_CELERY_QUEUE")
        self.consumer_id = uuid.uuid4().hex
        self._redis = client or get_redis()
        self._ttl = float(heartbeat_ttl if heartbeat_ttl is not None else app_setting("CELERY_CONSUMER_HEARTBEAT_TTL"))
        self._max_bytes = max_bytes
        prefix = f"@posthog-plugin-server/celery/{self.queue}/"
        self._consumers_key = prefix + "consumers"
        self._prefix = prefix
        self._alive_key = self._key("alive", self.consumer_id)
        self._inflight_key = self._key("inflight", self.consumer_id)
        self._landing_key = self._key("landing", self.consumer_id)
        self._take = self._redis.register_script(_TAKE_SCRIPT)
        self._requeue = self._redis.register_script(_REQUEUE_SCRIPT)
        self._next_seq = 0
        self._last_recovery = 0.0
        self._stopped = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._closed = False

    def _key(self, kind: str, consumer_id: str) -> str:
        return f"{self._prefix}{kind}/{consumer_id}"

    def start(self) -> None:
        """Announce this consumer, give back dead consumers' messages, start the heartbeat."""
        self._beat()
        self._redis.sadd(self._consumers_key, self.consumer_id)
        self.recover()
        if self._heartbeat_thread is None:
            self._heartbeat_thread = threading.Thread(
                target=self._heartbeat_loop, name=f"celery-heartbeat-{self.consumer_id[:8]}", daemon=True
            )
            self._heartbeat_thread.start()

    def _beat(self) -> None:
        self._redis.set(self._alive_key, "1", px=int(self._ttl * 1000))

    def _heartbeat_loop(self) -> None:
        # A thread, not the loop, keeps us alive: a batch that takes long (slow
        # plugins, a database retried with backoff) must not look like a death.
        while not self._stopped.wait(self._ttl / 3):
            try:
                self._beat()
            except redis.RedisError:
                logger.warning("celery source: heartbeat failed", exc_info=True, extra={"consumer_id": self.consumer_id})

    def recover(self) -> int:
        """Requeue the in-flight messages of every consumer whose heartbeat is gone."""
        self._last_recovery = time.monotonic()
        members = cast(set[bytes], self._redis.smembers(self._consumers_key))
        consumer_ids = sorted(member.decode() for member in members)
        if not consumer_ids:
            return 0
        with self._redis.pipeline(transaction=False) as pipe:
            for consumer_id in consumer_ids:
                pipe.exists(self._key("alive", consumer_id))
            alive = pipe.execute()
        moved = 0
        for consumer_id, is_alive in zip(consumer_ids, alive):
            if is_alive or consumer_id == self.consumer_id:
                continue
            # The script is atomic: two consumers recovering the same dead one
            # at once requeue its messages once.
            count = int(self._requeue(keys=[self.queue, self._key("landing", consumer_id), self._key("inflight", consumer_id)]))
            self._redis.srem(self._consumers_key, consumer_id)
            if count:
                logger.warning(
                    "celery source: requeued %d in-flight messages of dead consumer %s",
                    count,
                    consumer_id,
                    extra={"queue": self.queue, "consumer_id": consumer_id},
                )
                get_metrics().incr(INGESTION_SOURCE_RECOVERED, count, tags={"source": self.name.value})
            moved += count
        return moved

    def poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        with _redis_away_is_retriable():
            return self._poll(max_messages, timeout)

    def _poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        if time.monotonic() - self._last_recovery > self._ttl:
            self.recover()
        deliveries = self._take_batch(max_messages)
        if not deliveries and timeout > 0:
            # Block until one message arrives; it lands in a list of ours, so
            # it survives our death like the in-flight hash.
            # Redis takes a fractional timeout; redis-py's stub says int.
            waited = self._redis.blmove(self.queue, self._landing_key, cast(int, timeout), src="RIGHT", dest="LEFT")
            if waited is not None:
                deliveries = self._take_batch(max_messages)
        if deliveries:
            get_metrics().incr(INGESTION_MESSAGES_POLLED, len(deliveries), tags={"source": self.name.value})
        return deliveries

    def _take_batch(self, max_messages: int) -> list[Delivery]:
        first = self._next_seq
        args: list[int | str] = [max_messages, self._max_bytes, first, self.consumer_id, int(self._ttl * 1000)]
        keys = [self.queue, self._landing_key, self._inflight_key, self._alive_key, self._consumers_key]
        payloads: list[bytes] = self._take(keys=keys, args=args)
        self._next_seq = first + len(payloads)
        return [Delivery(payload=payload, token=first + index, queue=self.queue) for index, payload in enumerate(payloads)]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            with _redis_away_is_retriable():
                self._redis.hdel(self._inflight_key, *[delivery.token for delivery in deliveries])

    def in_flight(self) -> int:
        """Messages taken and not yet acknowledged (for status and tests)."""
        return cast(int, self._redis.hlen(self._inflight_key)) + cast(int, self._redis.llen(self._landing_key))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stopped.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
        returned = int(self._requeue(keys=[self.queue, self._landing_key, self._inflight_key]))
        self._redis.srem(self._consumers_key, self.consumer_id)
        self._redis.delete(self._alive_key)
        if returned:
            logger.info("celery source: returned %d unacknowledged messages to the queue", returned, extra={"queue": self.queue})
