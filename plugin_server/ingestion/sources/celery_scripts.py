"""The Lua scripts of the Celery source (``celery.py``), kept to Redis 5.0's commands.

PostHog deployments of 2021 ran Redis 5 and 6.0, so nothing here (nor in
the source) uses a command newer than 5.0: no ``BLMOVE``/``LMOVE`` (6.2), no
``LPOS`` (6.0.6), no ``GETDEL``/``HRANDFIELD`` (6.2). The scripts use only
``SET ... PX``, ``SADD``, ``RPOP``, ``RPUSH``, ``LRANGE``, ``HSET`` (one
field), ``HGET``, ``HKEYS``, ``HINCRBY``, ``HDEL``, ``DEL`` and
``redis.sha1hex``; ``SCRIPT_COMMANDS`` lists them and
``tests/ingestion/test_celery_redis5.py`` checks it against the scripts' text
and the 5.0 command table. The source's own blocking wait is ``BRPOPLPUSH``
(deprecated in 6.2, present in every version), with whole seconds before 6.0.

Every script is deterministic (no time, no random): it may be replicated
verbatim (Redis < 5 default) or by effects.
"""

from __future__ import annotations

# Every command the scripts below call, and every command the source sends
# itself (besides EVALSHA/SCRIPT LOAD that redis-py uses to run them).
SCRIPT_COMMANDS = frozenset({"SET", "SADD", "RPOP", "RPUSH", "LRANGE", "HSET", "HGET", "HKEYS", "HINCRBY", "HDEL", "DEL"})
SOURCE_COMMANDS = frozenset(
    {"BRPOPLPUSH", "SMEMBERS", "SREM", "EXISTS", "HLEN", "LLEN", "HDEL", "SET", "DEL", "SADD", "INFO", "EVALSHA", "SCRIPT", "MULTI", "EXEC"}
)

# KEYS: landing, inflight, alive, consumers, attempts, then the queue's lists in
#       the order kombu consumes them (the plain list first, then \x06\x163, ...)
# ARGV: max messages, max bytes, first sequence number, consumer id, heartbeat ttl (ms)
# Moves messages off the lists into the in-flight hash, counting each hand-out
# in the attempts hash (by the SHA-1 of the message) in the same atomic step.
# A message handed out before (a suspect: the consumer that held it died)
# comes alone: if others were taken already, it goes back where it was.
# Returns {message, attempts, index of the list it came from (1 = landing), SHA-1} per message.
TAKE = """
redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])
redis.call('SADD', KEYS[4], ARGV[4])
local max, budget, seq = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lists = {KEYS[1]}
for i = 6, #KEYS do lists[#lists + 1] = KEYS[i] end
local out, n, size, from = {}, 0, 0, 1
while n < max and size < budget and from <= #lists do
  local msg = redis.call('RPOP', lists[from])
  if not msg then
    from = from + 1
  else
    local id = redis.sha1hex(msg)
    local attempts = redis.call('HINCRBY', KEYS[5], id, 1)
    if attempts > 1 and n > 0 then
      redis.call('HINCRBY', KEYS[5], id, -1)
      redis.call('RPUSH', lists[from], msg)
      break
    end
    redis.call('HSET', KEYS[2], seq + n, msg)
    n = n + 1
    out[n] = {msg, attempts, from, id}
    size = size + string.len(msg)
    if attempts > 1 then break end
  end
end
return out
"""

# KEYS: queue, landing, inflight, attempts
# ARGV: 1 to take back the count of every in-flight message (a graceful
#       close: no crash happened), 0 to keep it (a dead consumer's messages)
# Puts every message of one consumer back on the queue so that the oldest is
# taken first (the queue is consumed from its right end), then forgets them.
# Landing messages were never counted (only TAKE counts).
REQUEUE = """
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
  local msg = redis.call('HGET', KEYS[3], seqs[i])
  redis.call('RPUSH', KEYS[1], msg)
  if ARGV[1] == '1' then
    local id = redis.sha1hex(msg)
    if redis.call('HINCRBY', KEYS[4], id, -1) <= 0 then redis.call('HDEL', KEYS[4], id) end
  end
  moved = moved + 1
end
redis.call('DEL', KEYS[2], KEYS[3])
return moved
"""
