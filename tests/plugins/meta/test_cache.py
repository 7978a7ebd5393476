"""meta.cache against the real Redis (spec: plugins.md §6.2)."""

from __future__ import annotations

import time

import pytest
import redis

from plugin_server.exceptions import MetaCallError
from plugin_server.plugins.meta.cache import PluginCache, cache_key
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.redis_client import get_redis
from tests.factories import create_plugin_config
from tests.plugins.meta.conftest import context_of

pytestmark = [pytest.mark.redis, pytest.mark.django_db]


@pytest.fixture
def cache() -> PluginCache:
    return PluginCache()


@pytest.fixture
def raw() -> redis.Redis:
    return get_redis()


def test_key_prefix_is_plugin_and_team(ctx: PluginContext, cache: PluginCache, raw: redis.Redis) -> None:
    """It stores a key under @plugin/<plugin id>/<team id>/<key> as JSON text."""
    cache.set(ctx, "counter", {"a": [1, 2]})
    assert raw.get(f"@plugin/{ctx.plugin_id}/{ctx.team_id}/counter") == b'{"a":[1,2]}'


def test_key_without_team_uses_all() -> None:
    """It uses @all in place of the team id for a config without a team."""
    ctx = PluginContext(plugin_config_id=1, plugin_id=7, team_id=None, plugin_name="x")
    assert cache_key(ctx, "k") == "@plugin/7/@all/k"


def test_configs_of_one_plugin_in_one_team_share(ctx: PluginContext, cache: PluginCache, plugin_config: object) -> None:
    """It shares a cache between two configs of one plugin in one team, and not with another team."""
    sibling = context_of(create_plugin_config(team=plugin_config.team, plugin=plugin_config.plugin))  # type: ignore[attr-defined]
    other_team = context_of(create_plugin_config(plugin=plugin_config.plugin))  # type: ignore[attr-defined]
    cache.set(ctx, "shared", "yes")
    assert cache.get(sibling, "shared") == "yes"
    assert cache.get(other_team, "shared", "absent") == "absent"


def test_get_missing_returns_default(ctx: PluginContext, cache: PluginCache) -> None:
    """It returns the default for a missing key (None without one)."""
    assert cache.get(ctx, "nope", 999) == 999
    assert cache.get(ctx, "nope") is None


def test_counter_round_trip(ctx: PluginContext, cache: PluginCache) -> None:
    """It counts 1, 2, 3 with get then set(+1), as the original's test does."""
    cache.set(ctx, "counter", 0)
    seen = []
    for _ in range(3):
        counter = cache.get(ctx, "counter", 999)
        cache.set(ctx, "counter", counter + 1)
        seen.append(counter + 1)
    assert seen == [1, 2, 3]


def test_set_with_ttl(ctx: PluginContext, cache: PluginCache, raw: redis.Redis) -> None:
    """It sets a key with a TTL with SET EX; without a ttl the key does not expire."""
    cache.set(ctx, "short", 1, ttl_seconds=1)
    cache.set(ctx, "long", 1)
    assert 0 < raw.pttl(cache_key(ctx, "short")) <= 1000
    assert raw.ttl(cache_key(ctx, "long")) == -1


def test_ttl_really_expires(ctx: PluginContext, cache: PluginCache, raw: redis.Redis) -> None:
    """It lets Redis drop a key once its TTL is over (get then returns the default)."""
    cache.set(ctx, "gone", 1, ttl_seconds=1)
    # Redis expires keys by itself; shorten the wait by moving the deadline into the past.
    raw.pexpire(cache_key(ctx, "gone"), 1)
    deadline = time.monotonic() + 2
    while raw.exists(cache_key(ctx, "gone")) and time.monotonic() < deadline:
        pass
    assert cache.get(ctx, "gone", "default") == "default"


def test_raw_strings_and_invalid_json(ctx: PluginContext, cache: PluginCache, raw: redis.Redis) -> None:
    """It stores raw text with json_serialize=False, and reads invalid JSON as None."""
    cache.set(ctx, "raw", "not json", json_serialize=False)
    assert raw.get(cache_key(ctx, "raw")) == b"not json"
    assert cache.get(ctx, "raw", json_serialize=False) == "not json"
    assert cache.get(ctx, "raw", "default") is None


def test_incr(ctx: PluginContext, cache: PluginCache) -> None:
    """It increments atomically, on a value stored with set, by 1 or more."""
    cache.set(ctx, "n", 0)
    assert [cache.incr(ctx, "n") for _ in range(3)] == [1, 2, 3]
    assert cache.incr(ctx, "n", 10) == 13
    assert cache.get(ctx, "n") == 13
    assert cache.incr(ctx, "fresh") == 1


def test_incr_of_text_is_a_clear_error(ctx: PluginContext, cache: PluginCache) -> None:
    """It refuses to increment a non-integer value, naming the key, and leaves it unchanged."""
    cache.set(ctx, "word", "abc")
    with pytest.raises(MetaCallError, match="'word' is not an integer"):
        cache.incr(ctx, "word")
    assert cache.get(ctx, "word") == "abc"


def test_expire(ctx: PluginContext, cache: PluginCache, raw: redis.Redis) -> None:
    """It sets a TTL on an existing key and reports False for a missing one."""
    cache.set(ctx, "k", 1)
    assert cache.expire(ctx, "k", 60) is True
    assert 0 < raw.ttl(cache_key(ctx, "k")) <= 60
    assert cache.expire(ctx, "missing", 60) is False


def test_lists(ctx: PluginContext, cache: PluginCache) -> None:
    """It pushes one string or a list, reads ranges and lengths (later versions' API)."""
    assert cache.lpush(ctx, "l", "a") == 1
    assert cache.lpush(ctx, "l", ["b", "c"]) == 3
    assert cache.llen(ctx, "l") == 3
    assert cache.lrange(ctx, "l", 0, -1) == ["c", "b", "a"]
    assert cache.lrange(ctx, "l", 0, 0) == ["c"]
    assert cache.llen(ctx, "empty") == 0
    assert cache.lrange(ctx, "empty", 0, -1) == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c, x: c.set(x, "k", {1, 2}), "not JSON-serialisable"),
        (lambda c, x: c.set(x, 5, 1), "key must be a string"),
        (lambda c, x: c.set(x, "k" * 1001, 1), "longer than 1000"),
        (lambda c, x: c.set(x, "k", "x" * 1_048_577), "larger than"),
        (lambda c, x: c.set(x, "k", 1, ttl_seconds=-3), "positive number"),
        (lambda c, x: c.set(x, "k", 1, json_serialize=False), "must be a string"),
        (lambda c, x: c.lpush(x, "l", [1]), "list of strings"),
        (lambda c, x: c.lpush(x, "l", ["a"] * 1001), "between 1 and 1000"),
        (lambda c, x: c.lpush(x, "l", []), "between 1 and 1000"),
        (lambda c, x: c.lrange(x, "l", "0", 1), "integer start and stop"),
        (lambda c, x: c.incr(x, "n", 1.5), "must be an integer"),
        (lambda c, x: c.expire(x, "n", 0), "positive number"),
    ],
)
def test_bad_input_is_refused(ctx: PluginContext, cache: PluginCache, raw: redis.Redis, call, message) -> None:  # type: ignore[no-untyped-def]
    """It refuses bad input with a clear error and writes nothing."""
    with pytest.raises(MetaCallError, match=message):
        call(cache, ctx)
    assert list(raw.scan_iter(match=f"@plugin/{ctx.plugin_id}/*")) == []


def test_list_ops_on_a_string_key(ctx: PluginContext, cache: PluginCache) -> None:
    """It reports a list operation on a key holding a plain value as a clear error."""
    cache.set(ctx, "plain", 1)
    for call in (lambda: cache.lpush(ctx, "plain", "a"), lambda: cache.llen(ctx, "plain"), lambda: cache.lrange(ctx, "plain", 0, 1)):
        with pytest.raises(MetaCallError, match="does not hold a list"):
            call()


def test_lrange_is_bounded(ctx: PluginContext, cache: PluginCache) -> None:
    """It answers at most 10000 items at a time and says so for a longer range, counting from the end too."""
    for _ in range(11):
        cache.lpush(ctx, "long", ["x"] * 1000)
    assert len(cache.lrange(ctx, "long", 0, 9999)) == 10_000
    assert len(cache.lrange(ctx, "long", -10_000, -1)) == 10_000
    assert len(cache.lrange(ctx, "long", 5, 5)) == 1
    assert len(cache.lrange(ctx, "long", -11_000, 20)) == 21
    for start, stop in ((0, -1), (0, 10_000), (-11_000, -1)):
        with pytest.raises(MetaCallError, match="at most 10000 items"):
            cache.lrange(ctx, "long", start, stop)


def test_lpop_and_lrem(ctx: PluginContext, cache: PluginCache) -> None:
    """It pops one item (None when empty) or several (a list), and removes items by value (later versions' API)."""
    cache.lpush(ctx, "q", ["a", "b", "a", "c"])  # list is c, a, b, a
    assert cache.lpop(ctx, "q") == "c"
    assert cache.lrem(ctx, "q", 0, "a") == 2
    assert cache.lrange(ctx, "q", 0, -1) == ["b"]
    assert cache.lpop(ctx, "q", 5) == ["b"]
    assert cache.lpop(ctx, "q") is None
    assert cache.lpop(ctx, "q", 2) == []
    with pytest.raises(MetaCallError, match="count must be an integer"):
        cache.lpop(ctx, "q", 0)
    with pytest.raises(MetaCallError, match="integer count and a string"):
        cache.lrem(ctx, "q", 1, 5)
