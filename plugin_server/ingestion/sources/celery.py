"""The Celery source: tasks pushed by PostHog's capture endpoint onto Redis lists.

PostHog (kombu's Redis transport) ``LPUSH``es one JSON envelope per task onto
the list ``PLUGINS_CELERY_QUEUE``, or, for a task sent with a priority, onto
``<queue>\x06\x16<N>`` (N = 3, 6 or 9: kombu rounds the priority down to its
steps 0/3/6/9, and 0 is the plain list). A Celery worker takes from the
plain list first, then 3, 6, 9 (lower number first): this source does the
same. With kombu's ``global_keyprefix`` transport option
(``CELERY_GLOBAL_KEYPREFIX``) every list name starts with that prefix. The
original popped messages one by one and never acknowledged, so a crash lost
whatever it held. This source takes them in bulk and reliably instead:

- ``poll`` runs one Lua script that pops up to N messages (and at most a
  byte budget) off the lists and files each under a sequence number in this
  consumer's own in-flight hash, in the same atomic step. One round trip per
  batch. When every list is empty it blocks on ``BRPOPLPUSH`` of the plain
  list into a one-element landing list of this consumer, so an idle server
  neither spins nor sleeps (a message arriving on a priority list while it
  waits is taken when the wait ends: at most ``INGESTION_POLL_TIMEOUT``).
- The poison-pill contract of :mod:`.base`: when a dead consumer's
  in-flight messages are put back, the same script counts, in the queue's
  ``attempts`` hash (keyed by the SHA-1 of the message), that each was
  handed out once more without being finished. The take script reads that
  count (``Delivery.attempts`` = count + 1, ``Delivery.key`` = the SHA-1)
  and hands a message counted before out alone. While the hash is empty (no
  crash pending: the normal case) it reads and hashes nothing.
- ``ack`` deletes the batch's entries from the in-flight hash (one
  ``HDEL``), and the counts of its suspects with them (one ``MULTI``).
- Every consumer has a random id, is listed in a set, and keeps a heartbeat
  key alive (a thread refreshes it every third of
  ``CELERY_CONSUMER_HEARTBEAT_TTL``). At start and then once per TTL, any
  listed consumer whose heartbeat is gone has its in-flight and landing
  messages pushed back onto the plain list, oldest first to be taken again,
  each counted. So a SIGKILLed server's batch is delivered again; the
  event uuid makes that harmless downstream.
- ``close`` puts this consumer's own unacknowledged messages back at once,
  uncounted (a graceful stop is not a crash).

Redis 5.0 and 6.0 are enough: no command newer than 5.0 is used
(:mod:`.celery_scripts`); before 6.0 the blocking wait is rounded up to
whole seconds, as those versions require.

Keys (all under ``@posthog-plugin-server/celery/<prefix><queue>/``):
``consumers`` (set), ``alive/<id>``, ``inflight/<id>`` (hash),
``landing/<id>`` (list), ``attempts`` (hash).

Metrics: ``ingestion.messages_polled``, ``ingestion.source.recovered``.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import redis

from plugin_server.app_settings import app_setting
from plugin_server.events import Delivery, PluginEvent, SourceName
from plugin_server.exceptions import RetriableError
from plugin_server.ingestion.decode import DEFAULT_MAX_DEPTH, decode
from plugin_server.ingestion.sources.celery_scripts import ATTEMPTS_TTL_SECONDS, REQUEUE, TAKE
from plugin_server.metrics import INGESTION_MESSAGES_POLLED, INGESTION_SOURCE_RECOVERED, get_metrics
from plugin_server.redis_client import get_redis
from plugin_server.service import Service, ServiceState

logger = logging.getLogger(__name__)

# kombu's Redis transport: the separator of a priority list's name and its
# default priority steps, in the order a worker consumes them.
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def state_prefix(plain_list: str) -> str:
    """Where the source keeps its state (consumers, in-flight, attempts) for the queue whose plain list this is."""
    return f"@posthog-plugin-server/celery/{plain_list}/"


def priority_lists(queue: str, prefix: str = "") -> list[str]:
    """The Redis lists kombu puts ``queue``'s messages on, in the order a Celery worker takes them."""
    return [f"{prefix}{queue}{PRIORITY_SEPARATOR}{step}" if step else f"{prefix}{queue}" for step in PRIORITY_STEPS]

@contextmanager
def _redis_away_is_retriable() -> Iterator[None]:
    # A Redis restart or network blip is a service away, not a bug: the loop
    # retries with backoff instead of dying.
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise RetriableError(f"Redis unavailable: {error}") from error


class CelerySource:
    """Celery tasks from a queue's Redis lists, taken in bulk, acknowledged after the write.

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
        key_prefix: str | None = None,
        consumer_id: str | None = None,
    ) -> None:
        self.queue: str = queue or app_setting("PLUGINS_CELERY_QUEUE")
        self.key_prefix: str = app_setting("CELERY_GLOBAL_KEYPREFIX") if key_prefix is None else key_prefix
        # The plain list first: where requeued messages go and what an idle poll waits on.
        self.lists = priority_lists(self.queue, self.key_prefix)
        # Random unless given (an ingestion process gets its id from the main process,
        # which gives its messages back the moment it sees the process die: give_back_dead).
        self.consumer_id = consumer_id or uuid.uuid4().hex
        self._redis = client or get_redis()
        self._ttl = float(heartbeat_ttl if heartbeat_ttl is not None else app_setting("CELERY_CONSUMER_HEARTBEAT_TTL"))
        self._max_bytes = max_bytes
        prefix = state_prefix(self.lists[0])
        self._consumers_key = prefix + "consumers"
        self._attempts_key = prefix + "attempts"
        self._prefix = prefix
        self._alive_key = self._key("alive", self.consumer_id)
        self._inflight_key = self._key("inflight", self.consumer_id)
        self._landing_key = self._key("landing", self.consumer_id)
        self._take = self._redis.register_script(TAKE)
        self._requeue = self._redis.register_script(REQUEUE)
        self._whole_second_waits = False  # Redis < 6.0: blocking timeouts are whole seconds
        self._next_seq = 0
        self._last_recovery = 0.0
        self.heartbeat = _Heartbeat(self)
        self._closed = False

    def _key(self, kind: str, consumer_id: str) -> str:
        return f"{self._prefix}{kind}/{consumer_id}"

    def start(self) -> None:
        """Announce this consumer, give back dead consumers' messages, start the heartbeat."""
        self._whole_second_waits = _redis_major_version(self._redis) < 6
        self._beat()
        self._redis.sadd(self._consumers_key, self.consumer_id)
        self.recover()
        if self.heartbeat.state is ServiceState.NEW:
            self.heartbeat.start()

    def services(self) -> tuple[Service, ...]:
        """The source's own threads, as supervised services (shown with the consumer in /_ready)."""
        return (self.heartbeat,)

    def _beat(self) -> None:
        self._redis.set(self._alive_key, "1", px=int(self._ttl * 1000))

    def _heartbeat_loop(self, heartbeat: Service) -> None:
        # A thread, not the loop, keeps us alive: a batch that takes long (slow
        # plugins, a database retried with backoff) must not look like a death.
        while not heartbeat.sleep(self._ttl / 3):
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
            if not is_alive and consumer_id != self.consumer_id:
                moved += self._requeue_dead(consumer_id)
        return moved

    def give_back_dead(self, consumer_id: str) -> int:
        """Requeue now what ``consumer_id`` held: its process is known to be dead (waited for), so
        its heartbeat need not expire first, and nothing queued after its messages is taken before them."""
        self._redis.delete(self._key("alive", consumer_id))
        return self._requeue_dead(consumer_id)

    def _requeue_dead(self, consumer_id: str) -> int:
        # The script is atomic: two consumers recovering the same dead one
        # at once requeue its messages once.
        # Counted: the consumer died holding them.
        keys = [self.lists[0], self._key("landing", consumer_id), self._key("inflight", consumer_id), self._attempts_key]
        count = int(self._requeue(keys=keys, args=[1, ATTEMPTS_TTL_SECONDS]))
        self._redis.srem(self._consumers_key, consumer_id)
        if count:
            logger.warning(
                "celery source: requeued %d in-flight messages of dead consumer %s",
                count,
                consumer_id,
                extra={"queue": self.queue, "consumer_id": consumer_id},
            )
            get_metrics().incr(INGESTION_SOURCE_RECOVERED, count, tags={"source": self.name.value})
        return count

    def poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        with _redis_away_is_retriable():
            return self._poll(max_messages, timeout)

    def _poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        if time.monotonic() - self._last_recovery > self._ttl:
            self.recover()
        deliveries = self._take_batch(max_messages)
        if not deliveries and timeout > 0:
            # Block until one message arrives on the plain list; it lands in a
            # list of ours, so it survives our death like the in-flight hash.
            # BRPOPLPUSH, not BLMOVE (6.2): Redis 5 and 6.0 must do. Redis 6.0
            # takes a fractional timeout (redis-py's stub says int); 5 only
            # whole seconds (0 would mean forever).
            wait = max(1, math.ceil(timeout)) if self._whole_second_waits else timeout
            waited = self._redis.brpoplpush(self.lists[0], self._landing_key, cast(int, wait))
            if waited is not None:
                deliveries = self._take_batch(max_messages)
        if deliveries:
            get_metrics().incr(INGESTION_MESSAGES_POLLED, len(deliveries), tags={"source": self.name.value})
        return deliveries

    def _take_batch(self, max_messages: int) -> list[Delivery]:
        first = self._next_seq
        args: list[int | str] = [max_messages, self._max_bytes, first, self.consumer_id, int(self._ttl * 1000)]
        keys = [self._landing_key, self._inflight_key, self._alive_key, self._consumers_key, self._attempts_key, *self.lists]
        taken: list[list[bytes | int]] = self._take(keys=keys, args=args)
        self._next_seq = first + len(taken)
        # List 1 is our landing list, filled from the plain list.
        return [
            Delivery(
                payload=cast(bytes, payload),
                token=first + index,
                queue=self.lists[max(int(cast(int, from_list)) - 2, 0)],
                attempts=int(cast(int, attempts)),
                key=cast(bytes, key).decode(),
            )
            for index, (payload, attempts, from_list, key) in enumerate(taken)
        ]

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        suspects = {delivery.key for delivery in deliveries if delivery.attempts > 1}
        with _redis_away_is_retriable():
            if not suspects:
                self._redis.hdel(self._inflight_key, *[delivery.token for delivery in deliveries])
                return
            with self._redis.pipeline(transaction=True) as pipe:
                # One MULTI: the message and its count are forgotten together.
                pipe.hdel(self._inflight_key, *[delivery.token for delivery in deliveries])
                pipe.hdel(self._attempts_key, *suspects)
                pipe.execute()

    def forward(self, deliveries: Sequence[Delivery], pushes: dict[str, list[bytes]]) -> None:
        """Acknowledge ``deliveries`` and push their payloads onto other lists, all in one MULTI.

        ``pushes`` maps a list (a full key) to the payloads for it, oldest
        first; they are LPUSHed as a producer would, so a consumer taking from
        the right end takes them in that order. Either everything happens or,
        if this process dies first, nothing: the messages stay in flight here
        and are given back (at least once, never twice)."""
        if not deliveries:
            return
        suspects = {delivery.key for delivery in deliveries if delivery.attempts > 1}
        with _redis_away_is_retriable(), self._redis.pipeline(transaction=True) as pipe:
            for name, payloads in pushes.items():
                if payloads:
                    pipe.lpush(name, *payloads)
            pipe.hdel(self._inflight_key, *[delivery.token for delivery in deliveries])
            if suspects:
                pipe.hdel(self._attempts_key, *suspects)
            pipe.execute()

    def queue_depth(self) -> int:
        """Messages waiting in the queue's lists (for the progress line; one round trip)."""
        with self._redis.pipeline(transaction=False) as pipe:
            for name in self.lists:
                pipe.llen(name)
            return sum(int(length) for length in pipe.execute())

    def decode(self, delivery: Delivery, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> PluginEvent:
        """The task's event (:func:`~plugin_server.ingestion.decode.decode`)."""
        return decode(delivery, max_bytes, max_depth)

    def replay(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Push raw envelopes back onto their lists the way the capture endpoint does (LPUSH)."""
        with _redis_away_is_retriable(), self._redis.pipeline(transaction=False) as pipe:
            for queue, payload in messages:
                pipe.lpush(queue or self.lists[0], payload)
            pipe.execute()

    def in_flight(self) -> int:
        """Messages taken and not yet acknowledged (for status and tests)."""
        return cast(int, self._redis.hlen(self._inflight_key)) + cast(int, self._redis.llen(self._landing_key))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.heartbeat.stop()
        # A graceful stop is not a crash: what we give back is not counted.
        keys = [self.lists[0], self._landing_key, self._inflight_key, self._attempts_key]
        returned = int(self._requeue(keys=keys, args=[0, ATTEMPTS_TTL_SECONDS]))
        self._redis.srem(self._consumers_key, self.consumer_id)
        self._redis.delete(self._alive_key)
        if returned:
            logger.info("celery source: returned %d unacknowledged messages to the queue", returned, extra={"queue": self.queue})


def _redis_major_version(client: redis.Redis) -> int:
    """The server's major version (5 for 5.0.14); 0 when it does not say."""
    info = cast(dict[str, object], client.info("server"))
    try:
        return int(str(info.get("redis_version", "0")).split(".")[0])
    except ValueError:
        return 0


class _Heartbeat(Service):
    """The source's liveness key in Redis, refreshed every third of its TTL (a supervised service)."""

    def __init__(self, source: CelerySource) -> None:
        super().__init__("celery heartbeat")
        self._source = source

    def run(self) -> None:
        self._source._heartbeat_loop(self)
