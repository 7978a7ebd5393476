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
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from django.db.models import QuerySet
from django.utils import timezone

from plugin_server.events import SourceName
from plugin_server.metrics import DLQ_REPLAYED, DLQ_WRITTEN, INGESTION_MESSAGES_INVALID, get_metrics
from plugin_server.models import DeadLetter
from plugin_server.redis_client import get_redis

logger = logging.getLogger(__name__)

# Kept as the reason when a message's storage failed after every retry.
STORAGE_FAILED = "storage_failed"
# Kept when ingesting one event raised an error that is not a known one (a bug).
INGEST_ERROR = "ingest_error"


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


class DeadLetterStore:
    """Writes dead letters in bulk, logs and counts each one."""

    def write(self, entries: Sequence[DeadLetterEntry]) -> None:
        """Keep ``entries`` (one INSERT); raises the database's error if it is away."""
        if not entries:
            return
        DeadLetter.objects.bulk_create(
            [
                DeadLetter(
                    source=entry.source,
                    queue=entry.queue,
                    reason=entry.reason[:80],
                    error=entry.error,
                    payload=entry.payload,
                    team_id=entry.team_id,
                    event_uuid=_uuid_or_none(entry.event_uuid),
                )
                for entry in entries
            ]
        )
        metrics = get_metrics()
        for entry in entries:
            logger.warning(
                "dead-lettered a message: %s: %s",
                entry.reason,
                entry.error,
                extra={"reason": entry.reason, "queue": entry.queue, "team_id": entry.team_id, "event_uuid": entry.event_uuid},
            )
            metrics.incr(DLQ_WRITTEN, tags={"reason": entry.reason})
            if entry.reason != STORAGE_FAILED:
                metrics.incr(INGESTION_MESSAGES_INVALID, tags={"reason": entry.reason})


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
Replayer = Callable[[Sequence[DeadLetter]], None]


def _replay_to_celery_queue(letters: Sequence[DeadLetter]) -> None:
    # The raw envelope goes back onto the list it came from, the way the
    # capture endpoint pushes it (LPUSH; consumers take from the other end).
    unplaceable = [str(letter.id) for letter in letters if not letter.queue]
    if unplaceable:
        raise ValueError(f"dead letters without a queue cannot be replayed: {', '.join(unplaceable)}")
    with get_redis().pipeline(transaction=False) as pipe:
        for letter in letters:
            pipe.lpush(letter.queue, bytes(letter.payload))
        pipe.execute()


# One replayer per source: the Kafka source adds its own here.
REPLAYERS: dict[str, Replayer] = {
    SourceName.CELERY.value: _replay_to_celery_queue,
    SourceName.PLUGIN.value: _replay_to_celery_queue,
}


def replay(letters: Iterable[DeadLetter]) -> int:
    """Put each letter's raw message back on its queue and mark it replayed; returns how many.

    A replayed message goes through the whole pipeline again (decode, plugins,
    storage); if it fails again it comes back as a new letter."""
    by_source: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_source.setdefault(letter.source, []).append(letter)
    replayed = 0
    for source, group in by_source.items():
        replayer = REPLAYERS.get(source)
        if replayer is None:
            raise ValueError(f"no way to replay dead letters of source {source!r}")
        replayer(group)
        DeadLetter.objects.filter(id__in=[letter.id for letter in group]).update(replayed_at=timezone.now())
        replayed += len(group)
    get_metrics().incr(DLQ_REPLAYED, replayed)
    return replayed


def pending() -> QuerySet[DeadLetter]:
    """Letters not replayed yet, oldest first."""
    return DeadLetter.objects.filter(replayed_at__isnull=True).order_by("created_at")
