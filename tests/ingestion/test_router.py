"""The router of INGESTION_PROCESSES on a real Redis: slices by person in queue order, moved whole or
not at all, back-pressure on full slices."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import pytest
import redis

from plugin_server.events import Delivery
from plugin_server.ingestion.decode import decode
from plugin_server.ingestion.router import Router, move_back_leftover_slices, slice_of, slice_queue
from plugin_server.ingestion.sources.celery import CelerySource
from tests.ingestion.celery_tasks import celery_app, die, send_event_task, task_args

pytestmark = [pytest.mark.redis]

PEOPLE = 8


@pytest.fixture
def router(unique_name: str) -> Iterator[Router]:
    router = Router(3, batch_size=100, poll_timeout=0, high_water=40, source=CelerySource(queue=unique_name, heartbeat_ttl=2))
    router.source.start()
    yield router
    router.source.close()


def send(queue: str, count: int) -> None:
    with celery_app() as app:
        for index in range(count):
            data = {"event": "routed", "properties": {"rank": index // PEOPLE}}
            send_event_task(app, queue, task_args(data, distinct_id=f"person-{index % PEOPLE}", team_id=7))


def slice_events(client: redis.Redis, queue: str, index: int) -> list[dict[str, object]]:
    """The events waiting in one slice, oldest first (the end a consumer takes from)."""
    payloads = cast(list[bytes], client.lrange(slice_queue(queue, index), 0, -1))
    return [decode(Delivery(payload=payload, token=0, queue=""), 1 << 20) for payload in reversed(payloads)]


def test_each_person_goes_to_one_slice_in_queue_order(router: Router, unique_name: str, redis_client: redis.Redis) -> None:
    send(unique_name, 40)
    assert router.route_once() == 40
    assert router.source.in_flight() == 0
    assert redis_client.llen(unique_name) == 0
    seen = 0
    for index in range(3):
        events = slice_events(redis_client, unique_name, index)
        seen += len(events)
        ranks: dict[str, list[int]] = {}
        for event in events:
            assert slice_of(event["team_id"], event["distinct_id"], 3) == index
            ranks.setdefault(str(event["distinct_id"]), []).append(int(cast(dict[str, int], event["properties"])["rank"]))
        assert all(found == list(range(5)) for found in ranks.values())
    assert seen == 40


def test_a_router_that_dies_before_moving_its_batch_leaves_it_to_be_given_back(
    router: Router, unique_name: str, redis_client: redis.Redis
) -> None:
    """Taken but not forwarded (the process killed in between): nothing in the slices, the batch
    back on the queue for the next consumer, once."""
    send(unique_name, 10)
    taken = router.source.poll(100, 0)
    assert len(taken) == 10
    die(router.source)
    next_router = CelerySource(queue=unique_name, heartbeat_ttl=2)
    try:
        next_router.start()  # gives back what dead consumers held
        assert redis_client.llen(unique_name) == 10
        assert all(redis_client.llen(slice_queue(unique_name, index)) == 0 for index in range(3))
    finally:
        next_router.close()


def test_a_full_slice_holds_the_router_back(router: Router, unique_name: str, redis_client: redis.Redis) -> None:
    send(unique_name, 10)
    assert not router._full()
    redis_client.lpush(slice_queue(unique_name, 1), *([b"waiting"] * 40))
    assert router._full()


def test_slices_above_the_process_count_go_back_on_the_queue_first_oldest_first(unique_name: str, redis_client: redis.Redis) -> None:
    """A server with 2 ingestion processes after one with 4: what waits in slices 2 and 3 is put back on the
    queue's consumed end, each slice's oldest first and before what was queued since, and routed again;
    slices 0 and 1 are left to their processes. One process moves every slice back."""
    for index in range(4):
        # The router pushes on the left and processes take from the right: "s<i>-0" is each slice's oldest.
        redis_client.lpush(slice_queue(unique_name, index), *[f"s{index}-{n}".encode() for n in range(3)])
    redis_client.lpush(unique_name, b"newer")
    assert move_back_leftover_slices(redis_client, unique_name, "", 2) == 6
    assert not redis_client.exists(slice_queue(unique_name, 2)) and not redis_client.exists(slice_queue(unique_name, 3))
    assert redis_client.llen(slice_queue(unique_name, 0)) == 3 and redis_client.llen(slice_queue(unique_name, 1)) == 3
    taken = [redis_client.rpop(unique_name) for _ in range(7)]
    # Slice 3 was pushed after slice 2, so it comes first (slices hold different people), each oldest first; the newer last.
    assert taken == [b"s3-0", b"s3-1", b"s3-2", b"s2-0", b"s2-1", b"s2-2", b"newer"]
    assert move_back_leftover_slices(redis_client, unique_name, "", 0) == 6
    assert redis_client.llen(unique_name) == 6


def test_a_router_moves_leftover_slices_back_before_it_routes(unique_name: str, redis_client: redis.Redis) -> None:
    """Router.prepare puts a larger server's slices back, so their events are routed ahead of later ones."""
    send(unique_name, 2)
    leftover = cast(list[bytes], redis_client.lrange(unique_name, 0, -1))
    redis_client.delete(unique_name)
    redis_client.lpush(slice_queue(unique_name, 5), *leftover)
    router = Router(2, batch_size=100, poll_timeout=0, source=CelerySource(queue=unique_name, heartbeat_ttl=2))
    router.prepare()
    try:
        assert router.route_once() == 2
        assert not redis_client.exists(slice_queue(unique_name, 5))
        assert sum(len(slice_events(redis_client, unique_name, index)) for index in range(2)) == 2
    finally:
        router.source.close()


def test_what_a_dead_consumer_of_a_leftover_slice_held_goes_back_too(unique_name: str, redis_client: redis.Redis) -> None:
    """The in-flight messages of a killed process of the larger server are given back to its slice, then moved."""
    dead = CelerySource(queue=slice_queue(unique_name, 3), heartbeat_ttl=2)
    dead.start()
    redis_client.lpush(slice_queue(unique_name, 3), b"first", b"second")
    assert [delivery.payload for delivery in dead.poll(10, timeout=0)] == [b"first", b"second"]
    die(dead)  # killed: nothing given back, its heartbeat gone
    assert move_back_leftover_slices(redis_client, unique_name, "", 2) == 2
    assert dead.in_flight() == 0
    assert [redis_client.rpop(unique_name) for _ in range(2)] == [b"first", b"second"]
