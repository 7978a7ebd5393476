"""Reload over Redis pub/sub: publish_reload and the ReloadListener thread, against real Redis."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.test import override_settings

from plugin_server.pubsub import RELOAD_MESSAGE, ReloadListener, publish_reload

pytestmark = pytest.mark.redis


class Counter:
    """A callback that counts its calls and can be told to fail."""

    def __init__(self, fail_times: int = 0) -> None:
        self.calls = 0
        self.fail_times = fail_times
        self.called = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.called.set()
        if self.calls <= self.fail_times:
            raise RuntimeError("reload failed")


def poll_until(listener: ReloadListener, predicate: Callable[[], bool], deadline: float = 10.0) -> None:
    """Drive the listener with bounded poll calls until the predicate holds."""
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, "predicate did not hold in time"
        listener.poll(timeout=0.1)


@pytest.fixture
def channel(unique_name: str) -> Iterator[str]:
    with override_settings(PLUGINS_RELOAD_PUBSUB_CHANNEL=unique_name):
        yield unique_name


def subscribed(listener: ReloadListener) -> Callable[[], bool]:
    return lambda: listener.wait_subscribed(0)


def test_publish_reload_reaches_a_running_listener_thread(channel: str) -> None:
    """publish_reload() on PLUGINS_RELOAD_PUBSUB_CHANNEL makes a started listener call its callback."""
    callback = Counter()
    listener = ReloadListener(callback)
    assert listener.channel == channel
    listener.start()
    try:
        assert listener.wait_subscribed(5)
        assert publish_reload() == 1
        assert callback.called.wait(5)
        assert callback.calls == 1
    finally:
        listener.stop()
    assert not listener.is_alive()


def test_publish_reload_without_listeners_returns_zero(channel: str, redis_client: redis.Redis) -> None:
    """Publishing when no server listens is not an error: it reports 0 receivers."""
    assert publish_reload(redis_client) == 0


def test_a_burst_of_messages_costs_one_reload(channel: str, redis_client: redis.Redis) -> None:
    """Messages already waiting are drained together and coalesced into one callback call."""
    callback = Counter()
    listener = ReloadListener(callback)
    try:
        poll_until(listener, subscribed(listener))
        for _ in range(5):
            redis_client.publish(channel, RELOAD_MESSAGE)
        poll_until(listener, lambda: callback.calls > 0)
        assert callback.calls == 1
        assert listener.poll(timeout=0.2) == 0
    finally:
        listener.stop()


def test_a_failing_callback_does_not_stop_the_listener(channel: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    """An exception from the callback is logged and the next message still calls back."""
    callback = Counter(fail_times=1)
    listener = ReloadListener(callback)
    try:
        poll_until(listener, subscribed(listener))
        redis_client.publish(channel, "first")
        poll_until(listener, lambda: callback.calls == 1)
        assert "Plugin reload callback failed" in caplog.text
        redis_client.publish(channel, "second")
        poll_until(listener, lambda: callback.calls == 2)
    finally:
        listener.stop()


def test_listener_reconnects_after_its_connection_is_killed(channel: str, redis_client: redis.Redis) -> None:
    """A killed connection is re-established, reloads once (messages may be lost), then receives again."""
    callback = Counter()
    listener = ReloadListener(callback, reconnect_delay=0.05)
    try:
        poll_until(listener, subscribed(listener))
        assert _kill_client(redis_client, listener.client_name) == 1
        # The reconnect itself triggers one reload ...
        poll_until(listener, lambda: callback.calls == 1)
        # ... and the new subscription receives messages.
        redis_client.publish(channel, RELOAD_MESSAGE)
        poll_until(listener, lambda: callback.calls == 2)
    finally:
        listener.stop()
    # Redis drops a closed client when it reads the EOF, a moment after close().
    end = time.monotonic() + 5
    while _client_count(redis_client, listener.client_name) and time.monotonic() < end:
        time.sleep(0.02)
    assert _client_count(redis_client, listener.client_name) == 0


def _client_count(client: redis.Redis, name: str) -> int:
    return sum(1 for entry in client.client_list() if entry.get("name") == name)


def _kill_client(client: redis.Redis, name: str) -> int:
    ids = [entry["id"] for entry in client.client_list() if entry.get("name") == name]
    for client_id in ids:
        client.client_kill_filter(_id=client_id)
    return len(ids)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    end = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < end, "private redis-server did not start"
            time.sleep(0.05)
    client.close()
    return process


@pytest.mark.slow
def test_listener_survives_redis_going_away_and_coming_back(unique_name: str, tmp_path: Path) -> None:
    """With Redis stopped the listener backs off without dying; when Redis returns it resubscribes."""
    port = _free_port()
    server = _start_redis(port, tmp_path)
    callback = Counter()
    listener = ReloadListener(callback, channel=unique_name, url=f"redis://127.0.0.1:{port}/0", reconnect_delay=0.05, max_reconnect_delay=0.2)
    try:
        poll_until(listener, subscribed(listener))
        server.terminate()
        server.wait(10)
        for _ in range(10):
            assert listener.poll(timeout=0.05) == 0
        server = _start_redis(port, tmp_path)
        poll_until(listener, lambda: callback.calls == 1)
        publisher = redis.Redis(port=port)
        publisher.publish(unique_name, RELOAD_MESSAGE)
        poll_until(listener, lambda: callback.calls == 2)
        publisher.close()
    finally:
        listener.stop()
        server.terminate()
        server.wait(10)


def test_stop_closes_the_connection(channel: str, redis_client: redis.Redis) -> None:
    """After stop() the listener's connection is gone from Redis."""
    listener = ReloadListener(Counter())
    listener.start()
    assert listener.wait_subscribed(5)
    assert any(entry.get("name") == listener.client_name for entry in redis_client.client_list())
    listener.stop()
    assert not any(entry.get("name") == listener.client_name for entry in redis_client.client_list())
