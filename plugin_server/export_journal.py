"""The export lane's durable backlog: stored events waiting for ``on_event``, in Redis until exported.

The consumer acknowledges a batch once it is stored, before any plugin has
exported it (:mod:`plugin_server.export_lane`). So that a crash or a stop
does not silently forget those exports, every chunk of events the lane takes
is first written here, one Redis stream entry per chunk (one pipelined round
trip per consumer batch), and deleted once the export call returned (or the
chunk was shed, counted and logged). Delivery of exports is therefore **at
least once**: a chunk whose export was interrupted runs again, whole.

Each lane writes to a stream of its own (``<prefix>:<owner>``) and keeps a
heartbeat in a sorted set (``<prefix>:owners``, score = last beat, Unix
seconds). A lane that starts, and every running lane on each beat, adopts
the streams of owners whose beat is older than ``orphan_seconds``: it claims
one with ``ZREM`` (only one claimant gets 1), reads its entries, hands them
to its own backlog (journaling them again under its own stream) and deletes
the old stream. A lane stopped gracefully leaves what it could not export
with a beat of 0, so the next server to start takes it over at once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis

from plugin_server import json_codec

logger = logging.getLogger(__name__)

PREFIX = "plugin-server:exports"
# Entries read per XRANGE while adopting an orphan's stream.
ADOPT_PAGE = 100


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One chunk read back from a stream: which config, which events."""

    plugin_config_id: int
    events: list[dict[str, Any]]


class ExportJournal:
    """One lane's stream of unexported chunks and its heartbeat (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, orphan_seconds: float, prefix: str = PREFIX, owner: str | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.owner = owner or uuid.uuid4().hex
        self.orphan_seconds = orphan_seconds
        self.owners_key = f"{prefix}:owners"

    def stream(self, owner: str | None = None) -> str:
        return f"{self.prefix}:{owner or self.owner}"

    def beat(self, now: float | None = None) -> None:
        """Say this lane is alive (its stream is not an orphan)."""
        self.client.zadd(self.owners_key, {self.owner: time.time() if now is None else now})

    def append(self, chunks: list[tuple[int, bytes]]) -> list[str]:
        """Journal ``(config id, JSON of the events)`` chunks in one round trip; their entry ids."""
        if not chunks:
            return []
        pipe = self.client.pipeline(transaction=False)
        stream = self.stream()
        for config_id, body in chunks:
            pipe.xadd(stream, {"cfg": str(config_id), "events": body})
        return [_text(entry_id) for entry_id in pipe.execute()]

    def remove(self, entry_ids: list[str]) -> None:
        """The chunks were exported (or shed): forget them."""
        if entry_ids:
            self.client.xdel(self.stream(), *entry_ids)

    def release(self) -> None:
        """A graceful stop: what is left may be adopted by the next lane at once."""
        if self.client.xlen(self.stream()):
            self.client.zadd(self.owners_key, {self.owner: 0})
        else:
            self.client.zrem(self.owners_key, self.owner)
            self.client.delete(self.stream())

    def orphans(self, now: float | None = None) -> list[str]:
        """Owners whose last beat is older than ``orphan_seconds`` (never this lane)."""
        cutoff = (time.time() if now is None else now) - self.orphan_seconds
        # redis-py types every command as sync-or-async; this client is sync, hence the casts.
        owners = cast(list[bytes], self.client.zrangebyscore(self.owners_key, "-inf", cutoff))
        return [_text(owner) for owner in owners if _text(owner) != self.owner]

    def claim(self, owner: str) -> bool:
        """Take over an orphan's stream; False when another lane was first."""
        return bool(self.client.zrem(self.owners_key, owner))

    def read(self, owner: str) -> Iterator[tuple[str, JournalEntry | None]]:
        """An owner's entries, oldest first: ``(entry id, entry)``, None for an entry that cannot be read."""
        stream = self.stream(owner)
        start = "-"
        while True:
            page = cast(list[tuple[bytes, dict[bytes, bytes]]], self.client.xrange(stream, min=start, max="+", count=ADOPT_PAGE))
            if not page:
                return
            for entry_id, fields in page:
                yield _text(entry_id), _entry(fields)
            start = "(" + _text(page[-1][0])

    def drop(self, owner: str) -> None:
        """An adopted stream, once its entries are in this lane's own."""
        self.client.delete(self.stream(owner))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(fields: dict[Any, Any]) -> JournalEntry | None:
    try:
        config_id = int(_text(fields[b"cfg"]))
        events = json_codec.loads(fields[b"events"])
    except (KeyError, ValueError, TypeError):
        return None
    if not isinstance(events, list) or not all(isinstance(event, dict) for event in events):
        return None
    return JournalEntry(config_id, events)
