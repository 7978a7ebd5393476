"""The dead-letter store: messages that could not be ingested, kept for an operator.

A message lands here when it can never be ingested as it is (a malformed
envelope, an unknown task, an unknown team, an event too large, ...) or when
its storage kept failing after every retry. It is kept with its raw payload,
the queue it came from and a stable ``reason``, so that nothing is silently
lost: ``./manage.py dead_letters`` lists, shows, replays (puts the raw
message back on its queue) and purges them.

Writes are batched: one multi-row INSERT per consumer batch. Every entry is
logged with its reason (never its payload) and counted as ``dlq.written``
tagged with the reason.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from django.db import DataError, IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from plugin_server.exceptions import RetriableError
from plugin_server.metrics import DLQ_REPLAYED, DLQ_WRITTEN, INGESTION_MESSAGES_INVALID, get_metrics
from plugin_server.models import DeadLetter

logger = logging.getLogger(__name__)

# Kept as the reason when a message's storage failed after every retry.
STORAGE_FAILED = "storage_failed"
# Kept when ingesting one event raised an error that is not a known one (a bug).
INGEST_ERROR = "ingest_error"
# Decoding the message raised an error that is not a known one.
DECODE_ERROR = "decode_error"
# Handing the event to the plugin workers (or back) failed for this event alone.
PLUGINS_FAILED = "plugins_failed"
# The plugin workers stayed away through every retry: the batch is set aside.
PLUGINS_UNAVAILABLE = "plugins_unavailable"


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One message to set aside, with why."""

    source: str
    queue: str
    reason: str
    error: str
    payload: bytes
    team_id: int | None = None
    event_uuid: str | None = None


class MirrorTopic(Protocol):
    def write(self, entries: Sequence[DeadLetterEntry]) -> None: ...


class DeadLetterStore:
    """Writes dead letters in bulk, logs and counts each one.

    ``topic`` (the Kafka pipeline's :class:`~.dlq_topic.DeadLetterTopic`)
    gets every letter too, durably, before ``write`` returns.

    A dead letter always fits its table: every field is made safe for its
    column first (:func:`_row`): a team id outside the integer column's range
    is left out (its value is in the error text), texts are cut to their
    column and cleared of what Postgres refuses (NUL, lone surrogates), a
    uuid that is not one is left out. If the database still refuses the batch
    (a bug), each letter is written alone, and one still refused is kept with
    its raw payload and nothing else."""

    def __init__(self, topic: MirrorTopic | None = None) -> None:
        self.topic = topic

    def write(self, entries: Sequence[DeadLetterEntry]) -> None:
        """Keep ``entries`` (one INSERT, and the topic); raises RetriableError if the database or broker is away."""
        if not entries:
            return
        if self.topic is not None:
            self.topic.write(entries)
        rows = [_row(entry) for entry in entries]
        try:
            try:
                DeadLetter.objects.bulk_create(rows)
            except (DataError, IntegrityError):
                if connection.in_atomic_block:
                    raise  # the caller's transaction is broken: only it can recover (the consumer holds none)
                logger.exception("the database refused a batch of dead letters: writing them one by one")
                for entry, row in zip(entries, rows):
                    self._write_alone(entry, row)
        except (OperationalError, InterfaceError) as error:
            raise RetriableError(f"database unavailable for dead letters: {error}") from error
        metrics = get_metrics()
        for entry, row in zip(entries, rows):
            logger.warning(
                "dead-lettered a message: %s: %s",
                row.reason,
                row.error[:500],
                extra={"reason": row.reason, "queue": row.queue, "team_id": row.team_id, "event_uuid": row.event_uuid},
            )
            metrics.incr(DLQ_WRITTEN, tags={"reason": entry.reason})
            if entry.reason != STORAGE_FAILED:
                metrics.incr(INGESTION_MESSAGES_INVALID, tags={"reason": entry.reason})

    def _write_alone(self, entry: DeadLetterEntry, row: DeadLetter) -> None:
        try:
            with transaction.atomic():
                row.save(force_insert=True)
        except (DataError, IntegrityError) as error:
            logger.exception("the database refused a dead letter: keeping its payload only")
            bare = DeadLetter(
                source=_text(entry.source, 40),
                queue="",
                reason=_text(entry.reason, 80),
                error=_text(f"{entry.error} (the letter's other fields were refused: {error})", ERROR_MAX_CHARS),
                payload=bytes(entry.payload),
            )
            with transaction.atomic():
                bare.save(force_insert=True)


# What the error column keeps of a very long message.
ERROR_MAX_CHARS = 20_000
_INT_COLUMN = range(-(2**31), 2**31)
_NOT_FOR_POSTGRES = re.compile("[\x00\ud800-\udfff]")


def _text(value: object, limit: int) -> str:
    # Postgres text refuses NUL and anything that is not UTF-8 (a lone surrogate).
    text = value if isinstance(value, str) else str(value)
    return _NOT_FOR_POSTGRES.sub("\ufffd", text[:limit])


def _row(entry: DeadLetterEntry) -> DeadLetter:
    """The row of one letter, every field safe for its column."""
    error = entry.error
    team_id = entry.team_id
    if team_id is not None and (isinstance(team_id, bool) or not isinstance(team_id, int) or team_id not in _INT_COLUMN):
        error = f"{error} (team_id {str(team_id)[:100]} does not fit the team_id column)"
        team_id = None
    return DeadLetter(
        source=_text(entry.source, 40),
        queue=_text(entry.queue, 200),
        reason=_text(entry.reason, 80),
        error=_text(error, ERROR_MAX_CHARS),
        payload=bytes(entry.payload),
        team_id=team_id,
        event_uuid=_uuid_or_none(entry.event_uuid),
    )


def _uuid_or_none(value: str | None) -> str | None:
    # A plugin or a producer may have put anything in the uuid field; keep the
    # letter anyway, without the column.
    if not value:
        return None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


# --- Replay ---------------------------------------------------------------------
def replayer_for(source: str) -> Callable[[Sequence[tuple[str, bytes]]], None]:
    """The ``replay`` of the source a letter came from (it owns how its queue takes a message back)."""
    from plugin_server.ingestion.sources import source_for_replay

    return source_for_replay(source).replay


def replay(letters: Iterable[DeadLetter]) -> int:
    """Put each letter's raw message back on its queue and mark it replayed; returns how many.

    A replayed message goes through the whole pipeline again (decode, plugins,
    storage); if it fails again it comes back as a new letter."""
    by_source: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_source.setdefault(letter.source, []).append(letter)
    replayed = 0
    for source, group in by_source.items():
        unplaceable = [str(letter.id) for letter in group if not letter.queue]
        if unplaceable:
            raise ValueError(f"dead letters without a queue cannot be replayed: {', '.join(unplaceable)}")
        replayer_for(source)([(letter.queue, bytes(letter.payload)) for letter in group])
        DeadLetter.objects.filter(id__in=[letter.id for letter in group]).update(replayed_at=timezone.now())
        replayed += len(group)
    get_metrics().incr(DLQ_REPLAYED, replayed)
    return replayed


def pending() -> QuerySet[DeadLetter]:
    """Letters not replayed yet, oldest first."""
    return DeadLetter.objects.filter(replayed_at__isnull=True).order_by("created_at")
