"""Delivery counts of partitioned sources (Kafka, in-memory), kept in Redis per offset.

The poison-pill contract (:mod:`.base`) wants every hand-out of a message
counted durably. A Kafka message is identified by ``topic/partition/offset``
within a consumer group; its count lives in the Redis hash
``@posthog-plugin-server/stream/<group>/<topic>/<partition>/attempts``
(field: the offset), which expires a week after its last change.

One script per poll (:data:`_COUNT`), atomic: it walks the polled messages
in order and counts each, stopping *before* the first message that was
counted already (a suspect: its consumer died with it) unless that message
is the very first, which is then handed out alone. The caller hands out what
was counted and rewinds the partitions for the rest (not counted).
``forget`` deletes the counts of acknowledged messages; ``take_back``
undoes this hand-out's count for messages given back by a graceful stop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import redis

from plugin_server.redis_client import get_redis

# KEYS: one hash per message (repeated); ARGV: the offsets, then the TTL in seconds (last).
# Returns the counts of the messages handed out (a prefix of the list).
_COUNT = """
local ttl = tonumber(ARGV[#ARGV])
local out = {}
for i = 1, #KEYS do
  local previous = tonumber(redis.call('HGET', KEYS[i], ARGV[i]) or '0')
  if previous > 0 and i > 1 then break end
  out[i] = redis.call('HINCRBY', KEYS[i], ARGV[i], 1)
  redis.call('EXPIRE', KEYS[i], ttl)
  if previous > 0 then break end
end
return out
"""

TTL_SECONDS = 7 * 24 * 3600

MessageId = tuple[str, int, int]  # topic, partition, offset


class AttemptCounter:
    """Counts hand-outs per (group, topic, partition, offset) in Redis."""

    def __init__(self, group: str, client: redis.Redis | None = None) -> None:
        self.group = group
        self._redis = client or get_redis()
        self._count = self._redis.register_script(_COUNT)

    def _key(self, topic: str, partition: int) -> str:
        return f"@posthog-plugin-server/stream/{self.group}/{topic}/{partition}/attempts"

    def count(self, messages: Sequence[MessageId]) -> list[int]:
        """Count the hand-out of a prefix of ``messages`` (see the module docstring); their counts."""
        if not messages:
            return []
        keys = [self._key(topic, partition) for topic, partition, _ in messages]
        args: list[int] = [offset for _, _, offset in messages]
        args.append(TTL_SECONDS)
        return [int(value) for value in self._count(keys=keys, args=args)]

    def forget(self, messages: Sequence[MessageId]) -> None:
        """Delete the counts of acknowledged messages (one round trip)."""
        by_key = self._group(messages)
        if by_key:
            with self._redis.pipeline(transaction=False) as pipe:
                for key, offsets in by_key.items():
                    pipe.hdel(key, *[str(offset) for offset in offsets])
                pipe.execute()

    def take_back(self, messages: Sequence[MessageId]) -> None:
        """Undo this hand-out's count of messages given back by a graceful stop."""
        by_key = self._group(messages)
        if by_key:
            with self._redis.pipeline(transaction=False) as pipe:
                for key, offsets in by_key.items():
                    for offset in offsets:
                        pipe.hincrby(key, str(offset), -1)
                pipe.execute()

    def _group(self, messages: Sequence[MessageId]) -> dict[str, list[int]]:
        by_key: dict[str, list[int]] = defaultdict(list)
        for topic, partition, offset in messages:
            by_key[self._key(topic, partition)].append(offset)
        return by_key
