"""The Celery source on the real Redis: bulk, reliable takes; ack after the write; dead consumers' messages return."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from plugin_server.ingestion.decode import decode
from plugin_server.ingestion.sources.celery import CelerySource
from tests.ingestion.celery_tasks import celery_app, die, send_event_task, task_args

pytestmark = pytest.mark.redis


@pytest.fixture
def sources() -> Iterator[list[CelerySource]]:
    """Every source a test makes, closed at the end."""
    made: list[CelerySource] = []
    yield made
    for source in made:
        source.close()


def new_source(sources: list[CelerySource], queue: str, **options: object) -> CelerySource:
    source = CelerySource(queue=queue, **options)  # type: ignore[arg-type]
    source.start()
    sources.append(source)
    return source


def send(queue: str, count: int, protocol: int = 2) -> list[str]:
    """Send ``count`` tasks whose distinct ids are "0", "1", ...; returns them in order."""
    with celery_app(protocol) as app:
        for index in range(count):
            send_event_task(app, queue, task_args(distinct_id=str(index)))
    return [str(index) for index in range(count)]


def distinct_ids(deliveries: list) -> list[str]:
    return [decode(delivery, 10**7)["distinct_id"] for delivery in deliveries]


def test_poll_takes_a_batch_in_queue_order_and_holds_it_until_ack(
    sources: list[CelerySource], unique_name: str, redis_client: redis.Redis
) -> None:
    """poll moves up to N messages, oldest first, into the in-flight store; ack forgets them."""
    sent = send(unique_name, 6)
    source = new_source(sources, unique_name)
    batch = source.poll(4, timeout=0)
    assert distinct_ids(batch) == sent[:4]
    assert redis_client.llen(unique_name) == 2
    assert source.in_flight() == 4
    source.ack(batch)
    assert source.in_flight() == 0
    rest = source.poll(10, timeout=0)
    assert distinct_ids(rest) == sent[4:]
    assert source.poll(10, timeout=0) == []


def test_poll_waits_on_an_empty_queue_then_returns_nothing(sources: list[CelerySource], unique_name: str) -> None:
    """On an empty queue poll blocks for about its timeout and returns an empty list."""
    source = new_source(sources, unique_name)
    started = time.monotonic()
    assert source.poll(10, timeout=0.3) == []
    assert 0.25 <= time.monotonic() - started < 2


def test_poll_blocks_until_a_message_arrives(sources: list[CelerySource], unique_name: str, redis_client: redis.Redis) -> None:
    """A message pushed while poll blocks is returned by that poll and held in flight."""
    source = new_source(sources, unique_name)
    # Another connection pushes while we block: BLMOVE wakes up at once.
    pusher = threading.Timer(0.1, lambda: send(unique_name, 1))
    pusher.start()
    batch = source.poll(10, timeout=5)
    pusher.join()
    assert distinct_ids(batch) == ["0"]
    assert source.in_flight() == 1


def test_close_gives_unacknowledged_messages_back_oldest_first(sources: list[CelerySource], unique_name: str) -> None:
    """Messages taken but not acknowledged return to the queue on close, and are taken again in order."""
    sent = send(unique_name, 5)
    first = new_source(sources, unique_name)
    batch = first.poll(3, timeout=0)
    first.ack(batch[:1])
    first.close()
    second = new_source(sources, unique_name)
    assert distinct_ids(second.poll(10, timeout=0)) == sent[1:]


def test_a_live_consumer_never_sees_another_live_consumers_messages(sources: list[CelerySource], unique_name: str) -> None:
    """Two consumers on one queue split its messages; recovery leaves a live consumer's in-flight messages alone."""
    send(unique_name, 4)
    first = new_source(sources, unique_name)
    second = new_source(sources, unique_name)
    taken_first = first.poll(2, timeout=0)
    assert second.recover() == 0
    taken_second = second.poll(10, timeout=0)
    assert sorted(distinct_ids(taken_first) + distinct_ids(taken_second)) == ["0", "1", "2", "3"]


def test_a_dead_consumers_messages_go_back_to_the_queue(
    sources: list[CelerySource], unique_name: str, redis_client: redis.Redis
) -> None:
    """When a consumer's heartbeat is gone (killed), a consumer starting later requeues its in-flight messages once."""
    sent = send(unique_name, 5)
    # A consumer that is killed: it polled, never acked, never closed.
    dead = CelerySource(queue=unique_name)
    dead.poll(3, timeout=0)
    # Its heartbeat key expiring is what a SIGKILL amounts to.
    redis_client.delete(f"@posthog-plugin-server/celery/{unique_name}/alive/{dead.consumer_id}")
    survivor = new_source(sources, unique_name)
    other = new_source(sources, unique_name)
    assert other.recover() == 0  # already requeued by the survivor's start
    # The dead consumer's three come back first, each alone (suspects: the
    # poison-pill contract), then the two it never took, together.
    batches = [survivor.poll(10, timeout=0) for _ in range(4)]
    assert [distinct_ids(batch) for batch in batches] == [["0"], ["1"], ["2"], ["3", "4"]]
    assert [[delivery.attempts for delivery in batch] for batch in batches] == [[2], [2], [2], [1, 1]]
    assert sent == ["0", "1", "2", "3", "4"]
    assert redis_client.sismember(f"@posthog-plugin-server/celery/{unique_name}/consumers", dead.consumer_id) == 0


def test_a_dead_consumers_message_taken_while_blocking_goes_back(
    sources: list[CelerySource], unique_name: str, redis_client: redis.Redis
) -> None:
    """A message a consumer received while blocking (its landing list) is not lost when it dies."""
    dead = CelerySource(queue=unique_name)
    dead.poll(1, timeout=0)  # registers it
    send(unique_name, 1)
    redis_client.brpoplpush(unique_name, f"@posthog-plugin-server/celery/{unique_name}/landing/{dead.consumer_id}", 1)
    redis_client.delete(f"@posthog-plugin-server/celery/{unique_name}/alive/{dead.consumer_id}")
    survivor = new_source(sources, unique_name)
    assert distinct_ids(survivor.poll(10, timeout=0)) == ["0"]


def test_a_batch_is_bounded_by_bytes_too(sources: list[CelerySource], unique_name: str) -> None:
    """A poll stops taking once the batch holds max_bytes, whatever max_messages says."""
    send(unique_name, 5)
    source = new_source(sources, unique_name, max_bytes=1)
    assert len(source.poll(100, timeout=0)) == 1


def test_protocol_1_messages_are_taken_too(sources: list[CelerySource], unique_name: str) -> None:
    """Protocol 1 tasks on the queue decode to the same events."""
    send(unique_name, 2, protocol=1)
    source = new_source(sources, unique_name)
    assert distinct_ids(source.poll(10, timeout=0)) == ["0", "1"]


def test_every_hand_out_is_counted_durably_and_a_suspect_comes_alone(
    sources: list[CelerySource], unique_name: str, redis_client: redis.Redis
) -> None:
    """attempts is 1 on a first delivery; after its consumer died with it, 2, handed out alone; then 3 (the contract).
    The count lives in Redis (keyed by the message's SHA-1), not in any process."""
    send(unique_name, 3)
    first = CelerySource(queue=unique_name)
    taken = first.poll(10, timeout=0)
    assert [delivery.attempts for delivery in taken] == [1, 1, 1]
    sha1 = hashlib.sha1(taken[0].payload).hexdigest()
    die(first)
    second = new_source(sources, unique_name)
    again = second.poll(10, timeout=0)
    assert [(delivery.key, delivery.attempts) for delivery in again] == [(sha1, 2)]
    assert redis_client.hget(f"@posthog-plugin-server/celery/{unique_name}/attempts", sha1) == b"1"
    die(second)
    third = new_source(sources, unique_name)
    assert [(delivery.key, delivery.attempts) for delivery in third.poll(10, timeout=0)] == [(sha1, 3)]


def test_ack_forgets_and_close_does_not_count(
    sources: list[CelerySource], unique_name: str, redis_client: redis.Redis
) -> None:
    """A graceful close is not a crash: the messages it gives back are handed out again as first deliveries."""
    send(unique_name, 2)
    source = CelerySource(queue=unique_name)
    source.start()
    taken = source.poll(10, timeout=0)
    source.ack(taken[:1])
    source.close()
    attempts_key = f"@posthog-plugin-server/celery/{unique_name}/attempts"
    assert redis_client.hlen(attempts_key) == 0
    again = new_source(sources, unique_name).poll(10, timeout=0)
    assert [(delivery.payload, delivery.attempts) for delivery in again] == [(taken[1].payload, 1)]


@pytest.mark.parametrize("prefix", ["", "kombu-prefix:"])
def test_priority_lists_are_consumed_in_kombus_order_under_its_key_prefix(
    sources: list[CelerySource], unique_name: str, redis_client: redis.Redis, prefix: str
) -> None:
    """send_task(priority=N) lands on <prefix><queue>\\x06\\x16<step>; every list is consumed, 0 first, then 3, 6, 9."""
    with celery_app() as app:
        if prefix:
            app.conf.broker_transport_options = {"global_keyprefix": prefix}
        for priority in (9, 5, 0, 3, 7):
            app.send_task("posthog.tasks.process_event.process_event_with_plugins", args=task_args(distinct_id=f"p{priority}"), queue=unique_name, priority=priority)
    lists = [key.decode() for key in redis_client.keys(f"{prefix}{unique_name}*")]
    assert sorted(lists) == sorted(f"{prefix}{unique_name}" + suffix for suffix in ("", "\x06\x163", "\x06\x166", "\x06\x169"))
    source = new_source(sources, unique_name, key_prefix=prefix)
    taken = source.poll(10, timeout=0)
    # kombu rounds a priority down to its steps: 5 → 3, 7 → 6; each list in the order sent.
    assert distinct_ids(taken) == ["p0", "p5", "p3", "p7", "p9"]
    assert [delivery.queue for delivery in taken][:2] == [f"{prefix}{unique_name}", f"{prefix}{unique_name}\x06\x163"]
