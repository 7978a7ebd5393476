"""Poison pills: messages that kill the process each time they are processed.

The source counts how often it has handed each message out
(``Delivery.attempts``, the contract in :mod:`.sources.base`) and hands a
message counted before (a *suspect*: a process died with it in hand) out
alone. The consumer then:

- processes a suspect on its own, and before each risky step (decode, the
  plugin workers, storage, the dead-letter write) notes the step in a
  :class:`CrashNotes` store (Redis), keyed by the message's identity;
- dead-letters a message whose ``attempts`` exceed ``POISON_MAX_ATTEMPTS``
  as ``poison``, without decoding it, with the step it was last seen in.

Notes cost nothing on the normal path: only suspects are noted, and a
note is forgotten when its message is acknowledged. A note left behind (the
message was removed by hand) expires after a week.

Metrics: ``dlq.written`` with ``reason=poison``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import cast

import redis

from plugin_server.events import Delivery
from plugin_server.redis_client import get_redis

logger = logging.getLogger(__name__)

POISON = "poison"
NOTE_TTL_SECONDS = 7 * 24 * 3600

# What a step means to an operator reading the dead letter.
STAGES = {
    "decode": "decoding the message",
    "plugins": "handing the event to the plugin workers",
    "store": "storing the event",
    "dead_letter": "writing the dead letter",
}


class CrashNotes:
    """Where each suspect message was last seen, kept in Redis so it outlives the process."""

    def __init__(self, source: str, client: redis.Redis | None = None) -> None:
        self._source = source
        self._client = client

    @property
    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = get_redis()
        return self._client

    def _key(self, delivery: Delivery) -> str:
        return f"@posthog-plugin-server/poison/{self._source}/{delivery.queue}/{delivery.key}"

    def note(self, deliveries: Sequence[Delivery], stage: str) -> None:
        """Record that these (suspect) messages enter ``stage``; best effort."""
        if not deliveries:
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for delivery in deliveries:
                    pipe.set(self._key(delivery), f"{stage}|{delivery.attempts}", ex=NOTE_TTL_SECONDS)
                pipe.execute()
        except redis.RedisError:
            # A missing note only makes the dead letter say less.
            logger.warning("could not note the stage of a suspect message", exc_info=True)

    def last(self, delivery: Delivery) -> str | None:
        """The step the message was in when a process died with it, if noted."""
        try:
            raw = cast(bytes | None, self._redis.get(self._key(delivery)))
        except redis.RedisError:
            logger.warning("could not read the stage of a suspect message", exc_info=True)
            return None
        if raw is None:
            return None
        stage, _, attempt = raw.decode(errors="replace").partition("|")
        return f"{STAGES.get(stage, stage)} (delivery {attempt})"

    def forget(self, deliveries: Sequence[Delivery]) -> None:
        """Drop the notes of acknowledged messages."""
        if deliveries:
            try:
                self._redis.delete(*[self._key(delivery) for delivery in deliveries])
            except redis.RedisError:
                logger.warning("could not forget the notes of suspect messages", exc_info=True)


def poison_error(delivery: Delivery, max_attempts: int, last_stage: str | None) -> str:
    """The dead letter's error text for a message quarantined as poison."""
    where = f"; last seen {last_stage}" if last_stage else "; the step it died in was not recorded"
    return (
        f"delivered {delivery.attempts} times (more than POISON_MAX_ATTEMPTS={max_attempts}) without being finished:"
        f" the server died while holding it each time{where}. Not processed again."
    )
