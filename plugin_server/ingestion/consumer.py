"""The consumer loop: poll → decode → plugins → ingest → dead letters → ack → on_event.

One batch at a time, whichever :class:`~.sources.base.Source` it is given:

1. ``Source.poll`` takes up to ``INGESTION_BATCH_SIZE`` messages (blocking at
   most ``INGESTION_POLL_TIMEOUT`` s on an empty queue).
2. Each is decoded by its source (``Source.decode``); one that cannot be
   becomes a dead letter.
3. ``WorkerPool.process_events`` runs the teams' plugins (events a plugin
   drops are left out).
4. ``Ingester.ingest`` stores the batch durably; events it finds invalid
   (unknown team, bad timestamp, ...) become dead letters.
5. Dead letters are written (one INSERT), then the whole batch is
   acknowledged: every message is now stored, dropped on purpose, or kept as
   a dead letter.
6. The stored events go to the export lane (``ExportLane.submit``, which
   never waits for an export: ``on_event``/``on_snapshot`` run there, see
   plugin_server/export_lane.py); without a lane, ``WorkerPool.on_events``
   runs them here.

Back-pressure is structural: ``run`` polls and decodes batch k+2 (steps 1-2,
on one helper thread) and runs batch k+1 through the plugins (step 3, on
another) while batch k is stored (steps 4-6), and polls again only when batch
k is done, so at most three batches (each bounded in messages and bytes) are
held, however long the queue. Delivery is at least once: a crash before step 5
leaves the batch unacknowledged and the source delivers it again; the event
uuid makes the second store a no-op.

Containment: whatever one message holds, the worst outcome is that message
dead-lettered. A message handed out more than ``POISON_MAX_ATTEMPTS`` times
(the process died holding it: :mod:`.poison`) is dead-lettered as ``poison``
unread; a suspect (handed out before) is processed with nothing else in
hand, its step noted before each risky one. Any error decoding one message
is its ``decode_error``; one event the plugin workers' hand-off fails on is
found by halves and dead-lettered as ``plugins_failed`` (the workers away
through every retry: the batch's events as ``plugins_unavailable``).

Errors, three paths: ``InvalidMessage`` → dead letter; ``RetriableError``
(a service away) → the same work retried with exponential backoff (a
source's poll and ack until they work or the loop is stopped); for storage, after
``INGESTION_RETRY_ATTEMPTS`` the batch is dead-lettered as ``storage_failed``
(if even that write fails, it is retried until it succeeds or the loop is
stopped, leaving the batch unacknowledged); any other error while ingesting
is bisected down to the event that causes it, which is dead-lettered as
``ingest_error`` while the rest of the batch is stored.

Stopping: :meth:`Consumer.stop` only sets a flag (safe from a signal
handler); the batch in hand is finished and acknowledged, then ``run``
returns. A stop during retries abandons the batch unacknowledged: the source
gives it back on close.

Metrics: ``ingestion.batch_size``, ``ingestion.batch_time``,
``ingestion.plugins_time``, ``ingestion.ingest_time`` (by the ingester),
``ingestion.events_stored``, ``ingestion.events_duplicate``,
``ingestion.events_dropped``, ``ingestion.retries``, plus ``dlq.written``;
and the original's, once per batch: ``kafka_queue.each_batch`` (the batch),
``kafka_queue.single_event`` (the batch's time per message),
``kafka_queue.single_ingestion`` and ``kafka_queue.single_on_event`` (storing,
on_event: the mean per event).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from django.db import connections

from plugin_server.app_settings import app_setting
from plugin_server.activity import ACTIVITY, Activity
from plugin_server.events import Delivery, PluginEvent
from plugin_server.exceptions import InvalidMessage, PluginsNotRun, RetriableError, WorkerDied
from plugin_server.ingestion.dlq import (
    DECODE_ERROR,
    INGEST_ERROR,
    PLUGINS_FAILED,
    PLUGINS_UNAVAILABLE,
    STORAGE_FAILED,
    DeadLetterEntry,
    DeadLetterStore,
)
from plugin_server.ingestion.letters import Letters, error_text
from plugin_server.ingestion.poison import POISON, CrashNotes, poison_error
from plugin_server.ingestion.sources.base import Source
from plugin_server.metrics import (
    INGESTION_BATCH_SIZE,
    INGESTION_BATCH_TIME,
    INGESTION_EVENTS_DROPPED,
    INGESTION_EVENTS_DUPLICATE,
    INGESTION_EVENTS_STORED,
    INGESTION_PLUGINS_TIME,
    INGESTION_RETRIES,
    KAFKA_QUEUE_EACH_BATCH,
    KAFKA_QUEUE_SINGLE_EVENT,
    KAFKA_QUEUE_SINGLE_INGESTION,
    KAFKA_QUEUE_SINGLE_ON_EVENT,
    get_metrics,
    timed,
)
from plugin_server.slow import slow_operation

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Batches taken ahead of the one being stored (one decoding, one in the plugins).
BATCHES_AHEAD = 2


class IngestOutcome(Protocol):
    """What ``Ingester.ingest`` returns (``plugin_server.ingestion.ingester.IngestResult``)."""

    stored: list[Any]
    duplicates: list[Any]
    invalid: list[tuple[PluginEvent, InvalidMessage]]


class EventIngester(Protocol):
    def ingest(self, events: Sequence[PluginEvent]) -> IngestOutcome: ...


class PreparingIngester(EventIngester, Protocol):
    """An ingester whose CPU-only first steps can run ahead (``plugin_server.ingestion.ingester.Ingester``)."""

    def prepare(self, events: Sequence[PluginEvent]) -> Any: ...

    def ingest(self, events: Sequence[PluginEvent], prepared: Any = None) -> IngestOutcome: ...


class ExportSink(Protocol):
    """Where stored events go for their exports (``plugin_server.export_lane.ExportLane``)."""

    def submit(self, events: Sequence[PluginEvent]) -> None: ...


class PluginRunner(Protocol):
    """The part of ``WorkerPool`` the loop uses."""

    def process_events(self, events: list[PluginEvent]) -> list[PluginEvent]: ...

    def on_events(self, events: list[PluginEvent]) -> None: ...


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """The loop's tuning, resolved once from the settings of the same names."""

    batch_size: int
    poll_timeout: float
    max_message_bytes: int
    retry_attempts: int
    retry_backoff: float
    retry_backoff_max: float
    poison_max_attempts: int = 3
    max_event_depth: int = 100

    @classmethod
    def from_settings(cls, **overrides: Any) -> ConsumerOptions:
        values: dict[str, Any] = {
            "batch_size": app_setting("INGESTION_BATCH_SIZE"),
            "poll_timeout": app_setting("INGESTION_POLL_TIMEOUT"),
            "max_message_bytes": app_setting("INGESTION_MAX_MESSAGE_BYTES"),
            "retry_attempts": app_setting("INGESTION_RETRY_ATTEMPTS"),
            "retry_backoff": app_setting("INGESTION_RETRY_BACKOFF"),
            "retry_backoff_max": app_setting("INGESTION_RETRY_BACKOFF_MAX"),
            "poison_max_attempts": app_setting("POISON_MAX_ATTEMPTS"),
            "max_event_depth": app_setting("MAX_EVENT_DEPTH"),
        }
        values.update(overrides)
        return cls(**values)


class _Abandoned(Exception):
    """The loop was stopped while a batch was being retried: leave it unacknowledged."""


class _RetriesExhausted(Exception):
    """A RetriableError outlived every retry."""


@dataclass(slots=True)
class _Batch:
    """One batch between taking and storing: what to ack, what to dead-letter, what to store."""

    deliveries: list[Delivery]
    started: float
    letters: list[DeadLetterEntry] = field(default_factory=list)
    events: list[PluginEvent] = field(default_factory=list)  # after the plugins
    by_uuid: dict[str, Delivery] = field(default_factory=dict)
    prepared: bool = False  # decoded (and then through the plugins)
    decoded: list[PluginEvent] | None = None  # decoded, not yet through the plugins
    ahead: Any = None  # the ingester's own preparing of ``events``, done on the taking thread (used once)

    @property
    def suspects(self) -> list[Delivery]:
        """Messages a process died with before (the source hands such a one out alone)."""
        return [delivery for delivery in self.deliveries if delivery.attempts > 1]


@dataclass(slots=True)
class _Outcome:
    """What became of one batch's events (merged across bisected ingest calls)."""

    kept: list[PluginEvent] = field(default_factory=list)  # stored or already stored
    stored: int = 0
    duplicates: int = 0
    letters: list[DeadLetterEntry] = field(default_factory=list)


class Consumer:
    """Runs batches from one source through plugins and storage, acknowledging after the write."""

    def __init__(
        self,
        source: Source,
        ingester: EventIngester,
        pool: PluginRunner | None = None,
        dead_letters: DeadLetterStore | None = None,
        options: ConsumerOptions | None = None,
        clock: Callable[[], float] = time.monotonic,
        notes: CrashNotes | None = None,
        activity: Activity = ACTIVITY,
        exports: ExportSink | None = None,
    ) -> None:
        self.source = source
        self.exports = exports
        self.activity = activity
        self.notes = notes or CrashNotes(source.name.value)
        self.letters = Letters(source.name.value)
        self.ingester = ingester
        self.pool = pool
        self.dead_letters = dead_letters or DeadLetterStore()
        self.options = options or ConsumerOptions.from_settings()
        self._clock = clock
        self._stopping = threading.Event()
        self._paused = False
        # Clear while a batch holding a suspect is in hand: the taking thread polls no further.
        self._suspect_done = threading.Event()
        self._suspect_done.set()
        # Heartbeat for status/readiness: when the loop last went round.
        self.last_iteration: float = clock()
        self.batches = 0

    # --- control -------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish its batch and return; safe to call from a signal handler."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def pause(self) -> None:
        """Stop taking messages (what is in hand is finished)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    def run(self) -> None:
        """Run batches until :meth:`stop`, two batches ahead of the one stored; then return (the caller closes the source).

        Three threads, each a stage of one batch at a time, in queue order:
        the taking thread polls and decodes batch k+2, the plugins thread
        runs batch k+1 through the plugin workers and prepares it for
        storing, and this thread stores, acknowledges and exports batch k.
        The waits on Redis, the plugin workers and the database overlap, and
        the Python work of one stage runs while another waits. At most three
        batches are in hand. After a stop, the batches taken ahead are
        finished too, so nothing taken is left half done."""
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="consumer-take") as taker,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="consumer-plugins") as plugins,
        ):
            try:
                self._run_ahead(taker, plugins)
            finally:
                # Database connections are per thread: close every thread's own.
                taker.submit(connections.close_all).result()
                plugins.submit(connections.close_all).result()
                connections.close_all()

    def _run_ahead(self, taker: ThreadPoolExecutor, plugins: ThreadPoolExecutor) -> None:
        ahead: deque[Future[_Batch | None]] = deque()
        while True:
            while len(ahead) < BATCHES_AHEAD and not self._stopping.is_set() and not self._paused:
                taken = taker.submit(self._take_decoded)
                ahead.append(plugins.submit(self._through_plugins, taken))
            if ahead:
                batch = ahead.popleft().result()
            elif self._stopping.is_set():
                return
            else:  # paused, with nothing in hand
                self.last_iteration = self._clock()
                self._stopping.wait(min(self.options.poll_timeout, 0.1))
                continue
            if batch is not None:
                try:
                    self._finish(batch)
                finally:
                    if batch.suspects:
                        self._suspect_done.set()

    # --- one batch -----------------------------------------------------------------
    def run_once(self) -> int:
        """Take, process, store and acknowledge one batch; returns the number of messages taken."""
        if self._paused:
            self.last_iteration = self._clock()
            return 0
        batch = self._poll()
        if batch is None:
            return 0
        self._finish(batch)
        return len(batch.deliveries)

    def _poll(self) -> _Batch | None:
        """One poll of the source (retried while it is away); None when nothing came."""
        self.last_iteration = self._clock()
        try:
            deliveries = self._retrying(lambda: self.source.poll(self.options.batch_size, self.options.poll_timeout), forever=True)
        except _Abandoned:
            return None
        if not deliveries:
            return None
        return _Batch(deliveries, started=time.perf_counter())

    def _take_decoded(self) -> _Batch | None:
        """The taking thread's stage: poll and decode.

        A suspect (a message a process died with before) is processed with
        nothing else in hand: a batch holding one is only polled here (it is
        prepared by ``_finish``), and the next poll waits until it is done."""
        while not self._suspect_done.wait(0.1):
            if self._stopping.is_set():
                return None
        batch = self._poll()
        if batch is None:
            return None
        if batch.suspects:
            self._suspect_done.clear()
            return batch
        self._decode(batch)
        return batch

    def _through_plugins(self, taken: Future[_Batch | None]) -> _Batch | None:
        """The plugins thread's stage: the decoded batch through the plugins, then prepared for storing."""
        batch = taken.result()
        if batch is not None and batch.decoded is not None:
            self._run_plugins(batch)
        return batch

    def _prepare(self, batch: _Batch) -> None:
        """Quarantine poison, decode, run the plugins; every failure is that message's dead letter."""
        self._decode(batch)
        self._run_plugins(batch)

    def _decode(self, batch: _Batch) -> None:
        """Quarantine poison and decode; a message that cannot be decoded is its own dead letter."""
        batch.prepared = True
        live: list[Delivery] = []
        for delivery in batch.deliveries:
            if delivery.attempts > self.options.poison_max_attempts:
                error = poison_error(delivery, self.options.poison_max_attempts, self.notes.last(delivery))
                batch.letters.append(self.letters.for_delivery(delivery, POISON, error))
            else:
                live.append(delivery)
        suspects = [delivery for delivery in live if delivery.attempts > 1]
        self.notes.note(suspects, "decode")
        events: list[PluginEvent] = []
        for delivery in live:
            try:
                event = self.source.decode(delivery, self.options.max_message_bytes, self.options.max_event_depth)
            except InvalidMessage as error:
                batch.letters.append(self.letters.for_delivery(delivery, error.reason, str(error), team_id=error.team_id))
                continue
            except Exception as error:  # noqa: BLE001 -- whatever one message holds, only it is set aside
                logger.exception("decoding a message failed")
                batch.letters.append(self.letters.for_delivery(delivery, DECODE_ERROR, error_text(error)))
                continue
            events.append(event)
            batch.by_uuid[str(event.get("uuid"))] = delivery
        batch.decoded = events

    def _run_plugins(self, batch: _Batch) -> None:
        """The decoded events through the plugins (an event the hand-off fails on is dead-lettered)."""
        events, batch.decoded = batch.decoded or [], None
        if not events:
            return
        self.notes.note([delivery for delivery in batch.suspects if delivery.attempts <= self.options.poison_max_attempts], "plugins")
        with timed(INGESTION_PLUGINS_TIME), slow_operation("consumer.plugins"):
            batch.events = self._plugins(events, batch)
        get_metrics().incr(INGESTION_EVENTS_DROPPED, len(events) - len(batch.events))
        self.activity.record("processEvent")
        self._prepare_ahead(batch)

    def _prepare_ahead(self, batch: _Batch) -> None:
        """The ingester's checks and preparing, here on the taking thread, off the storing one.

        The storing thread waits on the database most of its time; what
        needs no database is done while it waits. Optional: if it fails for
        any reason, storing prepares the batch itself (and meets the error
        there, with its retries and dead letters)."""
        prepare = getattr(self.ingester, "prepare", None)
        if prepare is None or not batch.events:
            return
        _recycle_connections()  # this thread's own (teams are read when not cached)
        try:
            batch.ahead = prepare(batch.events)
        except Exception:  # noqa: BLE001 -- storing prepares it again and handles what it meets
            logger.debug("preparing a batch ahead failed; it is prepared when stored", exc_info=True)

    def _finish(self, batch: _Batch) -> None:
        """Store, dead-letter, acknowledge, then on_event; a stop during retries leaves it unacknowledged."""
        self.last_iteration = self._clock()
        if not batch.prepared:
            self._prepare(batch)
        _recycle_connections()
        try:
            with slow_operation("consumer.store"):
                self._store(batch)
        except _Abandoned:
            logger.warning("consumer stopped while retrying: %d messages left unacknowledged", len(batch.deliveries))
            return
        metrics = get_metrics()
        metrics.gauge(INGESTION_BATCH_SIZE, len(batch.deliveries))
        metrics.timing(INGESTION_BATCH_TIME, (time.perf_counter() - batch.started) * 1000)
        # The original's names, once per batch (a timing per event would cost a packet per event).
        metrics.timing(KAFKA_QUEUE_EACH_BATCH, (time.perf_counter() - batch.started) * 1000)
        _per_event(KAFKA_QUEUE_SINGLE_EVENT, batch.started, len(batch.deliveries))
        self.batches += 1

    def _store(self, batch: _Batch) -> None:
        outcome = _Outcome()
        suspects = batch.suspects
        # A poison letter keeps the step its message was last seen in: only live suspects are noted.
        noted = [delivery for delivery in suspects if delivery.attempts <= self.options.poison_max_attempts]
        if batch.events:
            self.notes.note(noted, "store")
            started = time.perf_counter()
            ahead, batch.ahead = batch.ahead, None
            self._ingest(batch.events, batch.by_uuid, outcome, ahead)
            _per_event(KAFKA_QUEUE_SINGLE_INGESTION, started, len(batch.events))
        letters = batch.letters + outcome.letters
        metrics = get_metrics()
        metrics.incr(INGESTION_EVENTS_STORED, outcome.stored)
        metrics.incr(INGESTION_EVENTS_DUPLICATE, outcome.duplicates)
        if letters:
            self.notes.note(noted, "dead_letter")
            self._retrying(lambda: self.dead_letters.write(letters), forever=True)
        self._retrying(lambda: self.source.ack(batch.deliveries), forever=True)
        self.notes.forget(suspects)
        self.activity.record("ingestEvent", len(batch.deliveries))
        if outcome.kept and (self.exports is not None or self.pool is not None):
            # After the ack: a plugin's on_event never holds up the queue, and
            # an event whose storage is not durable never reaches it.
            try:
                if self.exports is not None:
                    # The lane times the exports themselves (kafka_queue.single_on_event).
                    self.exports.submit(outcome.kept)
                elif self.pool is not None:
                    started = time.perf_counter()
                    self.pool.on_events(outcome.kept)
                    _per_event(KAFKA_QUEUE_SINGLE_ON_EVENT, started, len(outcome.kept))
                self.activity.record("onEvent")
            except Exception:  # noqa: BLE001 -- the events are stored; an export failure must not stop ingestion
                logger.exception("on_event hand-off failed for %d stored events", len(outcome.kept))

    def _plugins(self, events: list[PluginEvent], batch: _Batch) -> list[PluginEvent]:
        """The events after the plugins; an event the hand-off fails on is dead-lettered, the others go on."""
        if self.pool is None:
            return events
        pool = self.pool
        try:
            return self._retrying(lambda: pool.process_events(events))
        except _Abandoned:
            raise
        except _RetriesExhausted as error:
            # The workers stayed away: like storage, the batch is set aside, replayable.
            batch.letters.extend(self.letters.for_event(event, batch.by_uuid, PLUGINS_UNAVAILABLE, str(error)) for event in events)
            return []
        except PluginsNotRun as error:
            # A team's plugin worker was lost, twice: its events are set aside with the reason (never stored as if
            # their plugins had run); every other event's result is here.
            batch.letters.extend(self.letters.for_event(event, batch.by_uuid, PLUGINS_FAILED, reason) for event, reason in error.failed)
            return list(error.processed)
        except Exception as error:  # noqa: BLE001 -- one event that cannot cross to the workers must not stop the loop
            if len(events) == 1:
                logger.exception("handing an event to the plugin workers failed", extra={"event_uuid": events[0].get("uuid")})
                batch.letters.append(self.letters.for_event(events[0], batch.by_uuid, PLUGINS_FAILED, error_text(error)))
                return []
            middle = len(events) // 2
            return self._plugins(events[:middle], batch) + self._plugins(events[middle:], batch)

    def _ingest(self, events: list[PluginEvent], by_uuid: dict[str, Delivery], outcome: _Outcome, ahead: Any = None) -> None:
        unused = [ahead] if ahead is not None else []

        def ingest() -> IngestOutcome:
            # What was prepared ahead serves the first attempt only: a retry prepares afresh.
            if unused:
                return cast("PreparingIngester", self.ingester).ingest(events, unused.pop())
            return self.ingester.ingest(events)

        try:
            result = self._retrying(ingest)
        except _RetriesExhausted as error:
            for event in events:
                outcome.letters.append(self.letters.for_event(event, by_uuid, STORAGE_FAILED, str(error)))
            return
        except (_Abandoned, InvalidMessage):
            raise
        except Exception as error:  # noqa: BLE001 -- an input that breaks the ingester must not stop the loop
            if len(events) == 1:
                logger.exception("ingesting an event failed", extra={"event_uuid": events[0].get("uuid")})
                outcome.letters.append(self.letters.for_event(events[0], by_uuid, INGEST_ERROR, error_text(error)))
                return
            # Find the culprit by halves: the other events are still stored,
            # in a bounded number (log2 of the batch) of extra round trips.
            middle = len(events) // 2
            self._ingest(events[:middle], by_uuid, outcome)
            self._ingest(events[middle:], by_uuid, outcome)
            return
        invalid_uuids = {str(event.get("uuid")) for event, _ in result.invalid}
        outcome.kept.extend(event for event in events if str(event.get("uuid")) not in invalid_uuids)
        outcome.stored += len(result.stored)
        outcome.duplicates += len(result.duplicates)
        for event, invalid in result.invalid:
            outcome.letters.append(self.letters.for_event(event, by_uuid, invalid.reason, str(invalid), invalid.team_id))

    def _retrying(self, work: Callable[[], T], forever: bool = False) -> T:
        """``work()``, retried with exponential backoff while a service is away."""
        attempt = 0
        while True:
            try:
                return work()
            except (RetriableError, WorkerDied) as error:
                attempt += 1
                get_metrics().incr(INGESTION_RETRIES)
                if not forever and attempt >= self.options.retry_attempts:
                    raise _RetriesExhausted(f"gave up after {attempt} attempts: {error}") from error
                delay = min(self.options.retry_backoff * 2 ** (attempt - 1), self.options.retry_backoff_max)
                logger.warning("retrying in %.1fs after: %s", delay, error, extra={"attempt": attempt})
                if self._stopping.wait(delay):
                    raise _Abandoned() from error
                # A dropped database connection must be replaced before the retry.
                _recycle_connections()


def _per_event(metric: str, started: float, count: int) -> None:
    """One timing: the mean per event of work that began at ``started`` and covered ``count`` events."""
    if count:
        get_metrics().timing(metric, (time.perf_counter() - started) * 1000 / count)


def _recycle_connections() -> None:
    """Close database connections that broke or outlived CONN_MAX_AGE.

    Django only does this around requests; a long-lived loop does it at batch
    boundaries and before a retry. A connection inside a transaction (a test's
    wrapping one) is left alone: closing it would end that transaction."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()
