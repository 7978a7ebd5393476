"""Delivery counts of partitioned sources (Kafka, in-memory), kept in Redis per partition.

The poison-pill contract (:mod:`.base`) wants every hand-out of a message
counted durably. A partition's messages are handed out and acknowledged in
offset order, so two marks per partition say what every offset's state is,
without a Redis write per message:

- ``acked``: every offset below it was acknowledged (processed, durable);
- ``out``: every offset below it was handed out at least once.

An offset below ``acked`` that comes again (its commit was lost with the
process) was finished: attempt 1 again. An offset in ``[acked, out)`` was in
hand when its consumer died: a *suspect*; its count (field ``<offset>``,
starting at 2) is kept per offset, which only happens after a crash. An
offset at or above ``out`` is new: attempt 1.

Both marks of a partition live in the Redis hash
``@posthog-plugin-server/stream/<group>/<topic>/<partition>/attempts``
(expiring a week after its last change). One script per poll
(:data:`_COUNT`), atomic, walks the polled messages in order and stops
*before* the first suspect unless it is the very first message, which is
then handed out alone; the caller holds the rest and hands them out next.
``forget`` raises ``acked`` (one write per partition); ``take_back`` lowers
``out`` to what a graceful stop gives back, so that it counts as new again.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from plugin_server.redis_client import get_redis

# KEYS: one hash per partition of the poll; ARGV[1]: "<key index>:<offset>,..." in hand-out order;
# ARGV[2]: TTL in seconds. Returns the counts of the messages handed out (a prefix of the list).
_COUNT = """
local acked, out, seen = {}, {}, {}
local counts = {}
local n = 0
for k, offset in string.gmatch(ARGV[1], '(%d+):(%d+)') do
  k = tonumber(k); offset = tonumber(offset)
  if not seen[k] then
    local marks = redis.call('HMGET', KEYS[k], 'acked', 'out')
    acked[k] = tonumber(marks[1] or '0'); out[k] = tonumber(marks[2] or '0'); seen[k] = out[k]
  end
  local count = 1
  if offset >= acked[k] and offset < out[k] then
    if n > 0 then break end
    count = redis.call('HINCRBY', KEYS[k], tostring(offset), 1)
    if count == 1 then count = redis.call('HINCRBY', KEYS[k], tostring(offset), 1) end
  end
  n = n + 1
  counts[n] = count
  if offset + 1 > seen[k] then seen[k] = offset + 1 end
  if count > 1 then break end
end
for k, next_out in pairs(seen) do
  if next_out > out[k] then redis.call('HSET', KEYS[k], 'out', next_out) end
  redis.call('EXPIRE', KEYS[k], ARGV[2])
end
return counts
"""

# KEYS: the partition hashes; ARGV: their new "acked" marks (raised only), then the TTL.
# Forgets the per-offset counts below the new mark.
_FORGET = """
local ttl = ARGV[#ARGV]
for i = 1, #KEYS do
  local mark = tonumber(ARGV[i])
  local current = tonumber(redis.call('HGET', KEYS[i], 'acked') or '0')
  if mark > current then
    redis.call('HSET', KEYS[i], 'acked', mark)
    if redis.call('HLEN', KEYS[i]) > 2 then
      for _, field in ipairs(redis.call('HKEYS', KEYS[i])) do
        local offset = tonumber(field)
        if offset and offset < mark then redis.call('HDEL', KEYS[i], field) end
      end
    end
  end
  redis.call('EXPIRE', KEYS[i], ttl)
end
return 0
"""

TTL_SECONDS = 7 * 24 * 3600

MessageId = tuple[str, int, int]  # topic, partition, offset


class AttemptCounter:
    """Counts hand-outs per (group, topic, partition, offset) in Redis, two marks per partition."""

    def __init__(self, group: str, client: redis.Redis | None = None) -> None:
        self.group = group
        self._redis = client or get_redis()
        self._count = self._redis.register_script(_COUNT)
        self._forget = self._redis.register_script(_FORGET)

    def _key(self, topic: str, partition: int) -> str:
        return f"@posthog-plugin-server/stream/{self.group}/{topic}/{partition}/attempts"

    def count(self, messages: Sequence[MessageId]) -> list[int]:
        """Count the hand-out of a prefix of ``messages`` (see the module docstring); their counts."""
        if not messages:
            return []
        keys: dict[tuple[str, int], int] = {}
        listed = []
        for topic, partition, offset in messages:
            index = keys.setdefault((topic, partition), len(keys) + 1)
            listed.append(f"{index}:{offset}")
        names = [self._key(topic, partition) for topic, partition in keys]
        return [int(value) for value in self._count(keys=names, args=[",".join(listed), TTL_SECONDS])]

    def forget(self, messages: Sequence[MessageId]) -> None:
        """Acknowledged: raise each partition's ``acked`` mark past them (one round trip)."""
        marks: dict[tuple[str, int], int] = {}
        for topic, partition, offset in messages:
            if offset + 1 > marks.get((topic, partition), -1):
                marks[(topic, partition)] = offset + 1
        if marks:
            names = [self._key(topic, partition) for topic, partition in marks]
            self._forget(keys=names, args=[*marks.values(), TTL_SECONDS])

    def take_back(self, messages: Sequence[MessageId]) -> None:
        """Given back by a graceful stop: lower each partition's ``out`` mark so they count as new again."""
        lowest: dict[tuple[str, int], int] = {}
        for topic, partition, offset in messages:
            if offset < lowest.get((topic, partition), offset + 1):
                lowest[(topic, partition)] = offset
        if lowest:
            with self._redis.pipeline(transaction=False) as pipe:
                for (topic, partition), offset in lowest.items():
                    pipe.hset(self._key(topic, partition), "out", str(offset))
                pipe.execute()
