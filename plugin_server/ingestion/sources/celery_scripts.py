"""The Lua scripts of the Celery source (``celery.py``), kept to Redis 5.0's commands.

PostHog deployments of 2021 ran Redis 5 and 6.0, so nothing here (nor in
the source) uses a command newer than 5.0: no ``BLMOVE``/``LMOVE`` (6.2), no
``LPOS`` (6.0.6), no ``GETDEL``/``HRANDFIELD`` (6.2). The scripts use only
``SET ... PX``, ``SADD``, ``RPOP``, ``RPUSH``, ``LRANGE``, ``HSET`` (one
field), ``HGET``, ``HLEN``, ``HKEYS``, ``HINCRBY``, ``EXPIRE``, ``DEL`` and
``redis.sha1hex``; ``SCRIPT_COMMANDS`` lists them and
``tests/ingestion/test_celery_redis5.py`` checks it against the scripts' text
and runs them on real 5.0.6 and 6.0.9 servers. The source's own blocking wait is ``BRPOPLPUSH``
(deprecated in 6.2, present in every version), with whole seconds before 6.0.

Every script is deterministic (no time, no random): it may be replicated
verbatim (Redis < 5 default) or by effects.
"""

from __future__ import annotations

# Every command the scripts below call, and every command the source sends
# itself (besides EVALSHA/SCRIPT LOAD that redis-py uses to run them).
SCRIPT_COMMANDS = frozenset(
    {"SET", "SADD", "RPOP", "RPUSH", "LRANGE", "HSET", "HGET", "HLEN", "HKEYS", "HINCRBY", "EXPIRE", "DEL"}
)
SOURCE_COMMANDS = frozenset(
    {"BRPOPLPUSH", "LPUSH", "SMEMBERS", "SREM", "EXISTS", "HLEN", "LLEN", "HDEL", "SET", "DEL", "SADD", "INFO", "EVALSHA", "SCRIPT", "MULTI", "EXEC", "SCAN"}
)

# How the poison-pill count is kept, cheaply: a message's count is the number
# of times a consumer died holding it. It is written when that is learnt
# (REQUEUE of a dead consumer: HINCRBY on the SHA-1 of the message) and read
# by TAKE (attempts = count + 1). While the queue's attempts hash is empty
# (no crash is pending, the normal case) TAKE reads nothing and hashes
# nothing: every message is a first delivery. The hash expires a week after
# its last change, so a counted message removed by other means does not keep
# TAKE on its slower path for ever.
ATTEMPTS_TTL_SECONDS = 7 * 24 * 3600

# KEYS: landing, inflight, alive, consumers, attempts, then the queue's lists in
#       the order kombu consumes them (the plain list first, then \x06\x163, ...)
# ARGV: max messages, max bytes, first sequence number, consumer id, heartbeat ttl (ms)
# Moves messages off the lists into the in-flight hash in one atomic step.
# A message a consumer died with before (a suspect) comes alone: if others
# were taken already, it goes back where it was.
# Returns {message, attempts, index of the list it came from (1 = landing),
# SHA-1 or "" when not computed} per message.
TAKE = """
redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])
redis.call('SADD', KEYS[4], ARGV[4])
local counted = redis.call('HLEN', KEYS[5]) > 0
local max, budget, seq = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lists = {KEYS[1]}
for i = 6, #KEYS do lists[#lists + 1] = KEYS[i] end
local out, n, size, from = {}, 0, 0, 1
while n < max and size < budget and from <= #lists do
  local msg = redis.call('RPOP', lists[from])
  if not msg then
    from = from + 1
  else
    local attempts, id = 1, ''
    if counted then
      id = redis.sha1hex(msg)
      attempts = tonumber(redis.call('HGET', KEYS[5], id) or '0') + 1
    end
    if attempts > 1 and n > 0 then
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

# KEYS: the queue's plain list, then slice lists no ingestion process consumes any more
# Moves each slice's messages onto the end of the queue that is consumed first, the
# slice's oldest first: they were queued before anything now on the queue.
MOVE_BACK = """
local moved = 0
for k = 2, #KEYS do
  local waiting = redis.call('LRANGE', KEYS[k], 0, -1)
  for i = 1, #waiting do
    redis.call('RPUSH', KEYS[1], waiting[i])
  end
  moved = moved + #waiting
  redis.call('DEL', KEYS[k])
end
return moved
"""

# KEYS: queue, landing, inflight, attempts
# ARGV: 1 when the consumer died (each in-flight message's count goes up by
#       one: it was handed out and never finished), 0 for a graceful close
#       (the messages are merely given back); then the attempts TTL (seconds)
# Puts every message of one consumer back on the queue so that the oldest is
# taken first (the queue is consumed from its right end), then forgets them.
# Landing messages were never handed out: never counted.
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
    redis.call('HINCRBY', KEYS[4], redis.sha1hex(msg), 1)
  end
  moved = moved + 1
end
if ARGV[1] == '1' and #seqs > 0 then redis.call('EXPIRE', KEYS[4], ARGV[2]) end
redis.call('DEL', KEYS[2], KEYS[3])
return moved
"""
