"""``meta.cache``: Redis, namespaced per plugin and team.

Keys are ``@plugin/<plugin id>/<team id>/<key>`` (plugin id, not config id:
two configs of one plugin in one team share a cache; ``@all`` when the config
has no team). Values are stored as JSON text unless ``json_serialize`` is
false. Unlike the original, ``get`` of a missing key returns the default.
The list operations are the later versions' (lpush takes
one string or at most 1000; lpop, lrem).
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from plugin_server.exceptions import MetaCallError
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.redis_client import get_redis

MAX_KEY_CHARS = 1_000
# One value may not exceed this (JSON text): the cache is shared Redis memory.
MAX_VALUE_BYTES = 1_048_576
MAX_LPUSH_ITEMS = 1_000
# One lrange answer is held in the main process's memory: bound it.
MAX_LRANGE_ITEMS = 10_000


def cache_key(ctx: PluginContext, key: object) -> str:
    """The Redis key of a plugin's cache key."""
    if not isinstance(key, str):
        raise MetaCallError(f"cache key must be a string, not {type(key).__name__}")
    if len(key) > MAX_KEY_CHARS:
        raise MetaCallError(f"cache key is longer than {MAX_KEY_CHARS} characters")
    team = "@all" if ctx.team_id is None else ctx.team_id
    return f"@plugin/{ctx.plugin_id}/{team}/{key}"


def _ttl(ttl_seconds: object) -> int | None:
    # The original used a truthy ttl only: 0 and None mean "no expiry".
    if ttl_seconds is None or ttl_seconds == 0:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, (int, float)) or ttl_seconds < 0:
        raise MetaCallError(f"ttl_seconds must be a positive number, not {ttl_seconds!r}")
    return max(1, int(ttl_seconds))


def _encode(value: Any, json_serialize: bool) -> str:
    if json_serialize:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as error:
            raise MetaCallError(f"cache value is not JSON-serialisable: {error}") from error
    elif isinstance(value, str):
        text = value
    else:
        raise MetaCallError("cache value must be a string when json_serialize is False")
    if len(text.encode()) > MAX_VALUE_BYTES:
        raise MetaCallError(f"cache value is larger than {MAX_VALUE_BYTES} bytes")
    return text


class PluginCache:
    """The cache API a plugin sees, served in the main process."""

    def __init__(self, client: redis.Redis | None = None) -> None:
        self._client = client

    # redis-py types every command as sync-or-async; this client is sync, hence the casts.
    @property
    def client(self) -> redis.Redis:
        return self._client or get_redis()

    def set(self, ctx: PluginContext, key: str, value: Any, ttl_seconds: float | None = None, json_serialize: bool = True) -> None:
        self.client.set(cache_key(ctx, key), _encode(value, json_serialize), ex=_ttl(ttl_seconds))

    def get(self, ctx: PluginContext, key: str, default: Any = None, json_serialize: bool = True) -> Any:
        redis_key = cache_key(ctx, key)
        try:
            raw = self.client.get(redis_key)
        except redis.TimeoutError:
            # The original retried a timed-out GET once.
            raw = self.client.get(redis_key)
        if raw is None:
            return default
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
        if not json_serialize:
            return text
        try:
            return json.loads(text)
        except ValueError:
            # Invalid JSON reads as null, as in the original.
            return None

    def incr(self, ctx: PluginContext, key: str, by: int = 1) -> int:
        if isinstance(by, bool) or not isinstance(by, int):
            raise MetaCallError(f"incr: by must be an integer, not {by!r}")
        try:
            return cast(int, self.client.incrby(cache_key(ctx, key), by))
        except redis.ResponseError as error:
            raise MetaCallError(f"incr: the value of {key!r} is not an integer") from error

    def expire(self, ctx: PluginContext, key: str, ttl_seconds: float) -> bool:
        ttl = _ttl(ttl_seconds)
        if ttl is None:
            raise MetaCallError("expire: ttl_seconds must be a positive number")
        return bool(self.client.expire(cache_key(ctx, key), ttl))

    def lpush(self, ctx: PluginContext, key: str, values: str | list[str]) -> int:
        """Push one string or a list of at most 1000; returns the list's new length."""
        items = [values] if isinstance(values, str) else values
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise MetaCallError("lpush takes a string or a list of strings")
        if not items or len(items) > MAX_LPUSH_ITEMS:
            raise MetaCallError(f"lpush takes between 1 and {MAX_LPUSH_ITEMS} strings")
        if sum(len(item.encode()) for item in items) > MAX_VALUE_BYTES:
            raise MetaCallError(f"lpush values are larger than {MAX_VALUE_BYTES} bytes")
        try:
            return cast(int, self.client.lpush(cache_key(ctx, key), *items))
        except redis.ResponseError as error:
            raise MetaCallError(f"lpush: {key!r} does not hold a list") from error

    def lrange(self, ctx: PluginContext, key: str, start: int, stop: int) -> list[str]:
        """Items ``start`` to ``stop`` inclusive (negative: from the end); at most 10000 at a time."""
        if not all(isinstance(index, int) and not isinstance(index, bool) for index in (start, stop)):
            raise MetaCallError("lrange takes integer start and stop")
        redis_key = cache_key(ctx, key)
        try:
            if start < 0 or stop < 0 or stop - start >= MAX_LRANGE_ITEMS:
                # Only a range that may be long costs the extra LLEN.
                length = cast(int, self.client.llen(redis_key))
                first = max(start + length if start < 0 else start, 0)
                last = min(stop + length if stop < 0 else stop, length - 1)
                if last - first >= MAX_LRANGE_ITEMS:
                    raise MetaCallError(f"lrange returns at most {MAX_LRANGE_ITEMS} items at a time")
            items = cast(list[bytes], self.client.lrange(redis_key, start, stop))
        except redis.ResponseError as error:
            raise MetaCallError(f"lrange: {key!r} does not hold a list") from error
        return [item.decode("utf-8", errors="replace") for item in items]

    def lpop(self, ctx: PluginContext, key: str, count: int | None = None) -> str | list[str] | None:
        """Take the first item (None when empty), or up to ``count`` items as a list."""
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= MAX_LRANGE_ITEMS):
            raise MetaCallError(f"lpop: count must be an integer from 1 to {MAX_LRANGE_ITEMS}")
        try:
            popped = cast("bytes | list[bytes] | None", self.client.lpop(cache_key(ctx, key), count))
        except redis.ResponseError as error:
            raise MetaCallError(f"lpop: {key!r} does not hold a list") from error
        if popped is None:
            return [] if count is not None else None
        if isinstance(popped, list):
            return [item.decode("utf-8", errors="replace") for item in popped]
        return popped.decode("utf-8", errors="replace")

    def lrem(self, ctx: PluginContext, key: str, count: int, value: str) -> int:
        """Remove ``count`` occurrences of ``value`` (0: all; negative: from the end); returns how many went."""
        if isinstance(count, bool) or not isinstance(count, int) or not isinstance(value, str):
            raise MetaCallError("lrem takes an integer count and a string value")
        try:
            return cast(int, self.client.lrem(cache_key(ctx, key), count, value))
        except redis.ResponseError as error:
            raise MetaCallError(f"lrem: {key!r} does not hold a list") from error

    def llen(self, ctx: PluginContext, key: str) -> int:
        try:
            return cast(int, self.client.llen(cache_key(ctx, key)))
        except redis.ResponseError as error:
            raise MetaCallError(f"llen: {key!r} does not hold a list") from error
