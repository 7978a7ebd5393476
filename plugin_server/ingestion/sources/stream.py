"""Partitioned sources over sentry-arroyo's consumer backends: Kafka, and in memory for tests.

:class:`StreamSource` speaks arroyo's ``Consumer`` interface, so the same
code consumes Kafka (:class:`KafkaSource`, arroyo's ``KafkaConsumer`` on
confluent-kafka) and arroyo's ``LocalBroker`` (:class:`MemorySource`).
arroyo resolves starting offsets on assignment, drops staged offsets of
revoked partitions and retries commits; this class adds what the consumer
loop's :class:`~.base.Source` contract asks:

- **One thread on the client.** Every call on the arroyo consumer happens
  in :meth:`poll` (the loop's taking thread) or :meth:`close`: ``ack`` only
  records offsets under a lock, and the next ``poll`` stages and commits
  them (at most every ``commit_interval`` seconds, and always on revocation
  and close). So an offset is committed only after its batch was acknowledged,
  that is, durable.
- **Acknowledged in order.** The consumer loop acknowledges batches in the
  order it polled them; the committed offset of a partition is one past the
  highest acknowledged.
- **Losing partitions.** When the group takes partitions away (another
  server joined, or this one is closing), the revocation callback waits (at
  most ``revoke_wait`` seconds) for the batches in hand from them to be
  acknowledged, commits those offsets, and forgets the partitions: messages
  of theirs polled but not yet handed out are dropped, and a later ``ack``
  of a delivery from them is not committed (``kafka_queue.stale_deliveries``):
  the new owner processes it again, and the event uuid makes that harmless.
- **Attempts** (the poison-pill contract): counted per offset in Redis by
  :class:`~.attempts.AttemptCounter`; a suspect is handed out alone. What a
  poll took but did not hand out (behind a suspect) is kept, uncounted, and
  handed out by the next polls before anything new is fetched: after a
  crash, the hundreds of suspects its batches in hand leave are handed out
  one by one without a seek and a fetch from the broker each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from arroyo.backends.abstract import Consumer as ArroyoConsumer
from arroyo.backends.kafka import KafkaPayload
from arroyo.errors import ConsumerError, EndOfPartition, TransportError
from arroyo.types import BrokerValue, Partition, Topic

from plugin_server.events import Delivery, PluginEvent, SourceName
from plugin_server.exceptions import RetriableError
from plugin_server.ingestion.decode import DEFAULT_MAX_DEPTH
from plugin_server.ingestion.decode_kafka import decode_kafka_message, partition_key
from plugin_server.ingestion.sources.attempts import AttemptCounter, MessageId
from plugin_server.metrics import INGESTION_MESSAGES_POLLED, KAFKA_PARTITIONS_REVOKED, KAFKA_STALE_DELIVERIES, get_metrics

logger = logging.getLogger(__name__)

ConsumerFactory = Callable[[], ArroyoConsumer[KafkaPayload]]


class StreamSource:
    """A Source over an arroyo consumer subscribed to one topic."""

    name: SourceName = SourceName.KAFKA

    def __init__(
        self,
        topic: str,
        consumer_factory: ConsumerFactory,
        attempts: AttemptCounter,
        *,
        commit_interval: float = 1.0,
        revoke_wait: float = 30.0,
    ) -> None:
        self.topic = topic
        self._factory = consumer_factory
        self._attempts = attempts
        self._commit_interval = commit_interval
        self._revoke_wait = revoke_wait
        self._consumer: ArroyoConsumer[KafkaPayload] | None = None
        self._lock = threading.Condition()
        # By partition index (one topic): plain ints are cheap to hash on the hot path.
        self._partitions: dict[int, Partition] = {}  # assigned
        self._in_hand: dict[int, set[int]] = {}  # offsets handed out, not acknowledged
        self._acked: dict[int, int] = {}  # next offset to commit
        self._held: list[BrokerValue[KafkaPayload]] = []  # polled, not yet handed out (behind a suspect)
        self._last_commit = 0.0
        self._closing = False
        self.committed: dict[int, int] = {}  # what this source committed last, by partition (tests, status)

    # --- life ------------------------------------------------------------------------
    def start(self) -> None:
        if self._consumer is None:
            self._consumer = self._factory()
            self._consumer.subscribe([Topic(self.topic)], on_assign=self._on_assign, on_revoke=self._on_revoke)

    @property
    def assigned(self) -> set[int]:
        """The indexes of the partitions this source owns now."""
        with self._lock:
            return set(self._partitions)

    def _on_assign(self, offsets: Any) -> None:
        with self._lock:
            for partition in offsets:
                self._partitions[partition.index] = partition
                self._in_hand.setdefault(partition.index, set())
        logger.info("%s source: assigned %s", self.name.value, sorted(f"{p.topic.name}/{p.index}" for p in offsets))

    def _on_revoke(self, partitions: Sequence[Partition]) -> None:
        revoked = {partition.index for partition in partitions}
        deadline = time.monotonic() + self._revoke_wait
        with self._lock:
            # Let the batches in hand from these partitions finish (the loop's
            # other thread is storing them), so that their offsets are committed
            # here and the next owner does not process them again.
            while not self._closing and any(self._in_hand.get(index) for index in revoked):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(min(remaining, 0.5))
            unfinished = sum(len(self._in_hand.get(index, ())) for index in revoked)
            self._held = [value for value in self._held if value.partition.index not in revoked]
            offsets = {index: self._acked.pop(index) for index in revoked if index in self._acked}
        try:
            self._commit(offsets)
        except RetriableError:
            # Not committed: the next owner processes these again (the uuid makes that harmless).
            logger.warning("%s source: could not commit revoked partitions %s", self.name.value, sorted(revoked), exc_info=True)
        with self._lock:
            for index in revoked:
                self._partitions.pop(index, None)
                self._in_hand.pop(index, None)
                self._acked.pop(index, None)
        get_metrics().incr(KAFKA_PARTITIONS_REVOKED, len(revoked))
        logger.info(
            "%s source: partitions revoked %s (%d messages in hand left to the next owner)",
            self.name.value,
            sorted(revoked),
            unfinished,
        )

    # --- taking ----------------------------------------------------------------------
    def poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        consumer = self._require_consumer()
        self._commit_due()
        deadline = time.monotonic() + timeout
        try:
            if self._held:
                # Messages held back behind a suspect come first, in their order, and nothing new
                # is fetched for them; one fetch still happens (kept behind them), so that the
                # client shows the group it is alive through a long run of suspects.
                value = self._poll_once(consumer, 0.0)
                with self._lock:
                    if value is not None:
                        self._held.append(value)
                    polled, self._held = self._held[:max_messages], self._held[max_messages:]
            else:
                polled = []
                while len(polled) < max_messages:
                    value = self._poll_once(consumer, deadline - time.monotonic() if not polled else 0.0)
                    if value is None:
                        if polled or time.monotonic() >= deadline:
                            break
                        continue
                    polled.append(value)
        except (TransportError, ConsumerError) as error:
            # The broker is away (or refused the fetch): the loop retries with backoff.
            raise RetriableError(f"{self.name.value}: {error}") from error
        with self._lock:
            # A revocation during this poll: what came from the lost partitions is the next owner's.
            owned = self._partitions
            polled = [value for value in polled if value.partition.index in owned]
        try:
            deliveries = self._hand_out(consumer, polled)
        except Exception:
            # Not counted, not handed out (Redis away, say): they come first next time, never skipped.
            with self._lock:
                self._held[:0] = polled
            raise
        if deliveries:
            get_metrics().incr(INGESTION_MESSAGES_POLLED, len(deliveries), tags={"source": self.name.value})
        return deliveries

    @staticmethod
    def _poll_once(consumer: ArroyoConsumer[KafkaPayload], wait: float) -> BrokerValue[KafkaPayload] | None:
        try:
            return consumer.poll(max(wait, 0.0))
        except EndOfPartition:
            return None

    def _hand_out(self, consumer: ArroyoConsumer[KafkaPayload], polled: list[BrokerValue[KafkaPayload]]) -> list[Delivery]:
        if not polled:
            return []
        topic = self.topic
        counts = self._attempts.count([(topic, value.partition.index, value.offset) for value in polled])
        handed, rest = polled[: len(counts)], polled[len(counts) :]
        if rest:
            # After a suspect: these come next, uncounted so far, before anything new.
            with self._lock:
                self._held[:0] = rest
        deliveries = []
        with self._lock:
            for value, attempts in zip(handed, counts):
                index, offset = value.partition.index, value.offset
                self._in_hand.setdefault(index, set()).add(offset)
                deliveries.append(
                    Delivery(payload=value.payload.value, token=(index, offset), queue=topic, attempts=attempts, key=f"{topic}/{index}/{offset}")
                )
        return deliveries

    def decode(self, delivery: Delivery, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> PluginEvent:
        return decode_kafka_message(delivery.payload, max_bytes, max_depth)

    # --- acknowledging ---------------------------------------------------------------
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        acked: list[MessageId] = []
        stale = 0
        topic = self.topic
        with self._lock:
            for delivery in deliveries:
                index, offset = delivery.token
                in_hand = self._in_hand.get(index)
                if in_hand is None or offset not in in_hand or index not in self._partitions:
                    stale += 1
                    continue
                in_hand.discard(offset)
                if offset + 1 > self._acked.get(index, -1):
                    self._acked[index] = offset + 1
                acked.append((topic, index, offset))
            self._lock.notify_all()
        if stale:
            get_metrics().incr(KAFKA_STALE_DELIVERIES, stale)
            logger.warning("%s source: %d acknowledged messages belong to partitions now owned elsewhere", self.name.value, stale)
        self._attempts.forget(acked)

    def _commit_due(self) -> None:
        if time.monotonic() - self._last_commit >= self._commit_interval:
            with self._lock:
                offsets, self._acked = dict(self._acked), {}
            self._commit(offsets)

    def _commit(self, offsets: dict[int, int]) -> None:
        self._last_commit = time.monotonic()
        if not offsets or self._consumer is None:
            return
        with self._lock:
            staged = {self._partitions[index]: offset for index, offset in offsets.items() if index in self._partitions}
        if staged:
            try:
                self._consumer.stage_offsets(staged)
                self._consumer.commit_offsets()
            except Exception as error:  # noqa: BLE001 -- KafkaException after arroyo's own retries: the broker is away
                with self._lock:
                    for index, offset in offsets.items():  # committed with the next batch's offsets instead
                        if offset > self._acked.get(index, -1):
                            self._acked[index] = offset
                raise RetriableError(f"{self.name.value}: commit failed: {error}") from error
            self.committed.update({partition.index: offset for partition, offset in staged.items()})

    def _require_consumer(self) -> ArroyoConsumer[KafkaPayload]:
        if self._consumer is None:
            self.start()
        assert self._consumer is not None
        return self._consumer

    # --- stopping --------------------------------------------------------------------
    def close(self) -> None:
        """Commit what was acknowledged, give the rest back (its count taken back), leave the group."""
        consumer = self._consumer
        if consumer is None:
            return
        with self._lock:
            self._closing = True
            offsets, self._acked = dict(self._acked), {}
            given_back = [(self.topic, index, offset) for index, offsets_in_hand in self._in_hand.items() for offset in offsets_in_hand]
            self._in_hand = {p: set() for p in self._in_hand}
        try:
            self._attempts.take_back(given_back)  # first: even if the commit fails, a graceful stop is not a crash
            self._commit(offsets)
        finally:
            consumer.close()
            self._consumer = None

    # --- dead letters ----------------------------------------------------------------
    def replay(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Put raw messages ``(topic, payload)`` back on their topics, keyed by person; durable when it returns."""
        self._publish([(topic or self.topic, message_key(payload), payload) for topic, payload in messages])

    def _publish(self, messages: Sequence[tuple[str, str | None, bytes]]) -> None:
        raise NotImplementedError  # each backend publishes its own way


def message_key(payload: bytes) -> str | None:
    """The partition key of a raw consumption-topic message (None when it cannot be read)."""
    try:
        event = decode_kafka_message(payload, max(len(payload), 1))
    except Exception:  # noqa: BLE001 -- a broken message has no person: any partition will do
        return None
    return partition_key(event)
