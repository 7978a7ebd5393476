"""Spreading one Celery queue over N ingestion processes, one person always to the same one.

With ``INGESTION_PROCESSES`` above one, the server's main process runs a
:class:`Router` instead of the consumer loop: it takes messages off the
PostHog queue with the ordinary :class:`~.sources.celery.CelerySource` (in-flight
store, heartbeat, recovery), reads each message's ``(team_id, distinct_id)`` (:func:`route_key`)
and moves it onto the slice list of that key
(:func:`slice_queue`, ``crc32(team_id, distinct_id) mod N``), the way a Kafka
producer keys a partition. Ingestion process *i* consumes slice *i* with the
same CelerySource, so one person's events are taken, stored and acknowledged
by one process in the order they were queued, and everything else runs in
parallel.

Nothing is lost or doubled by the move: the pushes onto the slice lists and
the removal from the router's in-flight store are one MULTI
(:meth:`CelerySource.forward`). A router killed before it leaves its messages
in flight (given back by the next consumer of the queue, as any dead
consumer's); killed after, they are in the slice lists, where they wait
for their process. A message whose key cannot be read (not a Celery task of
ours, bad JSON, compressed) goes to slice 0, whose process dead-letters or
stores it exactly as the single process did.

Back-pressure: the router moves a batch only while every slice list holds
fewer than ``high_water`` messages, so at most about that many wait per
slice beyond what its process holds; the rest stays on the PostHog queue.

The slice lists are named after the queue and the slice index, not the
server: servers sharing a queue with the same ``INGESTION_PROCESSES`` share
the slices too (as they shared the queue before).
"""

from __future__ import annotations

import base64
import logging
import time
import zlib
from typing import Any, cast

import orjson
import redis

from plugin_server.events import Delivery
from plugin_server.exceptions import RetriableError
from plugin_server.ingestion.jsstring import js_string
from plugin_server.ingestion.sources.celery import CelerySource, priority_lists, state_prefix
from plugin_server.ingestion.sources.celery_scripts import MOVE_BACK
from plugin_server.service import Service

logger = logging.getLogger(__name__)

SLICE_SEPARATOR = ":ingestion-slice:"


def slice_queue(queue: str, index: int) -> str:
    """The queue name of slice ``index`` of ``queue`` (ingestion process ``index`` consumes it)."""
    return f"{queue}{SLICE_SEPARATOR}{index}"


def move_back_leftover_slices(client: redis.Redis, queue: str, key_prefix: str, in_use: int, indexes: set[int] | None = None) -> int:
    """Put the messages of ``queue``'s slices numbered ``in_use`` and above back on the queue; how many.

    A server started with fewer ingestion processes than the last one (or with
    one, which routes nothing: ``in_use`` 0) would otherwise leave them waiting
    for a server with the old count. First what dead consumers of those slices
    held in flight goes back onto its slice (once their heartbeat has
    expired, as for any dead consumer); then every such slice's messages go
    onto the end of the queue that is consumed first, oldest first (they were
    queued before anything on it now), in one script, and are routed or
    consumed again from there. ``indexes``: the slices to look at, found by
    :func:`leftover_slices` when not given (a SCAN of the keyspace: at start only)."""
    leftover = sorted(indexes if indexes is not None else leftover_slices(client, queue, key_prefix, in_use))
    if not leftover:
        return 0
    for index in leftover:
        CelerySource(queue=slice_queue(queue, index), client=client, key_prefix=key_prefix).recover()
    names = [priority_lists(slice_queue(queue, index), key_prefix)[0] for index in leftover]
    moved = int(cast(int, client.register_script(MOVE_BACK)(keys=[priority_lists(queue, key_prefix)[0], *names])))
    if moved:
        logger.warning(
            "moved %d messages from the slices %s of a server with more ingestion processes back onto %s",
            moved,
            ", ".join(names),
            queue,
            extra={"queue": queue, "moved": moved},
        )
    return moved


def leftover_slices(client: redis.Redis, queue: str, key_prefix: str, in_use: int) -> set[int]:
    """The slices of ``queue`` numbered ``in_use`` and above that hold messages or have consumers on record."""
    base = f"{key_prefix}{queue}{SLICE_SEPARATOR}"
    consumers = state_prefix(base)[:-1]  # the slice number follows
    found: set[int] = set()
    for prefix, suffix in ((base, ""), (consumers, "/consumers")):
        escaped = "".join(f"\\{char}" if char in "*?[]\\" else char for char in prefix)
        for key in client.scan_iter(match=f"{escaped}*{suffix}", count=1000):
            name = key.decode() if isinstance(key, bytes) else str(key)
            number = name[len(prefix) :].split("/", 1)[0]
            if number.isdigit() and int(number) >= in_use:
                found.add(int(number))
    return found


def slice_of(team_id: Any, distinct_id: Any, slices: int) -> int:
    """Which slice a person's events go to: stable across processes, restarts and hosts."""
    if slices <= 1:
        return 0
    key = f"{team_id}\x00{distinct_id}".encode("utf-8", "surrogatepass")
    return zlib.crc32(key) % slices


# kombu writes the envelope with its base64 body first: the body is then read
# without parsing the envelope (half the cost). Anything else parses it.
_BODY_FIRST = b'{"body": "'


def route_key(payload: bytes) -> tuple[Any, Any] | None:
    """``(team_id, distinct_id)`` of a protocol 2 ``process_event_with_plugins`` message, or None.

    Reads only what the key needs (the body's JSON, no limits or checks of
    the full decode): the router must stay far cheaper per message than an
    ingestion process. The values are those the full decode arrives at
    (``data`` laid over the arguments, the distinct id made text as
    JavaScript's ``String()``), so every delivery of one person agrees. The
    task name is not checked: a message that is not ours is dead-lettered by
    its ingestion process wherever it goes. A compressed or protocol 1 body
    gives None (slice 0)."""
    try:
        if payload.startswith(_BODY_FIRST):
            raw_body = payload[len(_BODY_FIRST) : payload.index(b'"', len(_BODY_FIRST))]
        else:
            raw_body = orjson.loads(payload)["body"]
        args = orjson.loads(base64.b64decode(raw_body))[0]
        distinct_id, data, team_id = args[0], args[3], args[4]
        if isinstance(data, dict):
            distinct_id = data.get("distinct_id", distinct_id)
            team_id = data.get("team_id", team_id)
        return str(team_id), js_string(distinct_id) if distinct_id is not None else None
    except Exception:  # noqa: BLE001 -- whatever the message holds, its process decides about it
        return None


class Router(Service):
    """Moves the queue's messages onto the slice lists (see the module docstring)."""

    name = "router"

    def __init__(
        self,
        processes: int,
        batch_size: int,
        poll_timeout: float,
        high_water: int | None = None,
        source: CelerySource | None = None,
    ) -> None:
        super().__init__()
        self.processes = processes
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.high_water = high_water if high_water is not None else 4 * batch_size
        self.source = source or CelerySource()
        self.slices = [priority_lists(slice_queue(self.source.queue, index), self.source.key_prefix)[0] for index in range(processes)]
        self.routed = 0
        self._leftover: set[int] = set()  # slices above ``processes`` still to be swept back

    def prepare(self) -> None:
        client, queue, prefix = self.source._redis, self.source.queue, self.source.key_prefix  # noqa: SLF001
        self._leftover = leftover_slices(client, queue, prefix, self.processes)
        move_back_leftover_slices(client, queue, prefix, self.processes, self._leftover)
        self.source.start()

    def run(self) -> None:
        swept = time.monotonic()
        while not self.stopping:
            try:
                if self._leftover and time.monotonic() - swept > self.source._ttl:  # noqa: SLF001 -- the dead consumers' cadence
                    # What dead consumers of leftover slices held comes back once their heartbeat expired.
                    swept = time.monotonic()
                    self._sweep_leftover()
                if self._full():
                    self.sleep(0.01)
                    continue
                self.route_once()
            except (RetriableError, redis.RedisError):
                logger.warning("router: Redis unavailable, retrying", exc_info=True)
                self.sleep(1.0)

    def _sweep_leftover(self) -> None:
        client = self.source._redis  # noqa: SLF001 -- the source's own connection
        move_back_leftover_slices(client, self.source.queue, self.source.key_prefix, self.processes, self._leftover)
        # A slice is done with once nothing waits in it and no consumer of it is on record.
        self._leftover = {
            index
            for index in self._leftover
            if client.exists(state_prefix(priority_lists(slice_queue(self.source.queue, index), self.source.key_prefix)[0]) + "consumers")
        }

    def _full(self) -> bool:
        redis_client = self.source._redis  # noqa: SLF001 -- the source's own connection
        with redis_client.pipeline(transaction=False) as pipe:
            for name in self.slices:
                pipe.llen(name)
            return any(int(length) >= self.high_water for length in pipe.execute())

    def route_once(self, timeout: float | None = None) -> int:
        """Take one batch off the queue and move it onto the slices; how many messages moved."""
        deliveries = self.source.poll(self.batch_size, self.poll_timeout if timeout is None else timeout)
        if not deliveries:
            return 0
        pushes: dict[str, list[bytes]] = {name: [] for name in self.slices}
        for delivery in deliveries:
            pushes[self.slices[self._slice(delivery)]].append(delivery.payload)
        self.source.forward(deliveries, pushes)
        self.routed += len(deliveries)
        return len(deliveries)

    def _slice(self, delivery: Delivery) -> int:
        key = route_key(delivery.payload)
        return 0 if key is None else slice_of(key[0], key[1], self.processes)

    def cleanup(self) -> None:
        self.source.close()

    def children(self) -> tuple[Service, ...]:
        # The source's heartbeat thread: started with the source, shown in /_ready under the router.
        return self.source.services()

    def recover(self) -> None:
        # A crash may have left a batch in flight: give it back, start afresh.
        self.source.close()
        self.source = CelerySource(queue=self.source.queue, key_prefix=self.source.key_prefix)
        self.source.start()
