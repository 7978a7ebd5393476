"""The Redis lock of the scheduler and the job consumer (spec: plugins.md §10), on the real Redis."""

from __future__ import annotations

import time

import pytest
import redis

from plugin_server.locks import LockKeeper, RedisLock

pytestmark = [pytest.mark.redis]


def test_only_one_holder_at_a_time(redis_client: redis.Redis, unique_name: str) -> None:
    """SET NX: the second handle cannot take a held lock; after release it can."""
    first, second = RedisLock(unique_name, 10, redis_client), RedisLock(unique_name, 10, redis_client)
    assert first.acquire()
    assert not second.acquire()
    assert first.release()
    assert second.acquire()
    assert redis_client.get(unique_name) == second.token.encode()
    second.release()


def test_extend_and_release_only_act_for_the_owner(redis_client: redis.Redis, unique_name: str) -> None:
    """Compare-and-set: another handle can neither extend nor delete the holder's lock."""
    owner, other = RedisLock(unique_name, 10, redis_client), RedisLock(unique_name, 10, redis_client)
    assert owner.acquire()
    assert not other.extend()
    assert not other.release()
    assert redis_client.get(unique_name) == owner.token.encode()
    assert owner.extend()
    assert 9_000 < redis_client.pttl(unique_name) <= 10_000
    owner.release()


def test_an_expired_lock_is_free_and_the_old_holder_cannot_extend_it(redis_client: redis.Redis, unique_name: str) -> None:
    """The TTL is PX: once it passes another holder takes over and the first one's extension fails."""
    first, second = RedisLock(unique_name, 0.2, redis_client), RedisLock(unique_name, 10, redis_client)
    assert first.acquire()
    deadline = time.monotonic() + 5
    while not second.acquire():
        assert time.monotonic() < deadline, "the lock never expired"
        time.sleep(0.02)
    assert not first.extend()
    assert not first.release()
    assert redis_client.get(unique_name) == second.token.encode()
    second.release()


def test_keepers_competing_exactly_one_holds_and_a_stopped_holder_hands_over(redis_client: redis.Redis, unique_name: str) -> None:
    """Two keepers: one holds; when it stops it releases, and the other takes it at its next step."""
    changes: list[bool] = []
    a = LockKeeper(RedisLock(unique_name, 6, redis_client), on_change=changes.append)
    b = LockKeeper(RedisLock(unique_name, 6, redis_client))
    assert a.step() == pytest.approx(3.0)  # held: extend every TTL/2
    assert b.step() == pytest.approx(0.6)  # not held: retry every TTL/10
    assert (a.held, b.held) == (True, False)
    a.stop()
    assert changes == [True, False]
    assert redis_client.get(unique_name) is None
    b.step()
    assert b.held
    b.stop()


def test_held_runs_out_without_extension(redis_client: redis.Redis, unique_name: str) -> None:
    """A keeper that could not extend (Redis away, process paused) stops acting a TTL after its last success."""
    now = [1000.0]
    keeper = LockKeeper(RedisLock(unique_name, 5, redis_client), clock=lambda: now[0])
    keeper.step()
    assert keeper.held
    now[0] += 4.9
    assert keeper.held
    now[0] += 0.2
    assert not keeper.held
    keeper.stop()


def test_a_lost_lock_is_noticed_and_taken_again_when_free(redis_client: redis.Redis, unique_name: str) -> None:
    """An extension that fails means lost: if someone else holds it, not held; once free, taken again."""
    keeper = LockKeeper(RedisLock(unique_name, 5, redis_client))
    keeper.step()
    redis_client.set(unique_name, "someone else")
    keeper.step()
    assert not keeper.held
    redis_client.delete(unique_name)
    keeper.step()
    assert keeper.held
    keeper.stop()
    assert redis_client.get(unique_name) is None


def test_keeper_thread_takes_the_lock_and_releases_it_on_stop(redis_client: redis.Redis, unique_name: str) -> None:
    """start() runs the steps on a thread; stop() releases the lock."""
    keeper = LockKeeper(RedisLock(unique_name, 2, redis_client))
    keeper.start()
    deadline = time.monotonic() + 5
    while not keeper.held:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    keeper.stop()
    assert not keeper.held
    assert redis_client.get(unique_name) is None
