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
  :class:`~.attempts.AttemptCounter`; a suspect is handed out alone and the
  partitions are rewound to what was not handed out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from arroyo.backends.abstract import Consumer as ArroyoConsumer
from arroyo.backends.kafka import KafkaPayload
from arroyo.errors import EndOfPartition
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
        self._assigned: set[Partition] = set()
        self._in_hand: dict[Partition, set[int]] = {}  # handed out, not acknowledged
        self._acked: dict[Partition, int] = {}  # next offset to commit
        self._last_commit = 0.0
        self._closing = False
        self.committed: dict[Partition, int] = {}  # what this source committed last (tests, status)

    # --- life ------------------------------------------------------------------------
    def start(self) -> None:
        if self._consumer is None:
            self._consumer = self._factory()
            self._consumer.subscribe([Topic(self.topic)], on_assign=self._on_assign, on_revoke=self._on_revoke)

    @property
    def assigned(self) -> set[Partition]:
        with self._lock:
            return set(self._assigned)

    def _on_assign(self, offsets: Any) -> None:
        with self._lock:
            self._assigned.update(offsets)
            for partition in offsets:
                self._in_hand.setdefault(partition, set())
        logger.info("%s source: assigned %s", self.name.value, sorted(f"{p.topic.name}/{p.index}" for p in offsets))

    def _on_revoke(self, partitions: Sequence[Partition]) -> None:
        revoked = set(partitions)
        deadline = time.monotonic() + self._revoke_wait
        with self._lock:
            # Let the batches in hand from these partitions finish (the loop's
            # other thread is storing them), so that their offsets are committed
            # here and the next owner does not process them again.
            while not self._closing and any(self._in_hand.get(p) for p in revoked):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(min(remaining, 0.5))
            unfinished = sum(len(self._in_hand.get(p, ())) for p in revoked)
            offsets = {p: self._acked.pop(p) for p in revoked if p in self._acked}
        self._commit(offsets)
        with self._lock:
            for partition in revoked:
                self._assigned.discard(partition)
                self._in_hand.pop(partition, None)
        get_metrics().incr(KAFKA_PARTITIONS_REVOKED, len(revoked))
        logger.info(
            "%s source: partitions revoked %s (%d messages in hand left to the next owner)",
            self.name.value,
            sorted(f"{p.topic.name}/{p.index}" for p in revoked),
            unfinished,
        )

    # --- taking ----------------------------------------------------------------------
    def poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        consumer = self._require_consumer()
        self._commit_due()
        deadline = time.monotonic() + timeout
        polled: list[BrokerValue[KafkaPayload]] = []
        try:
            while len(polled) < max_messages:
                wait = deadline - time.monotonic() if not polled else 0.0
                try:
                    value = consumer.poll(max(wait, 0.0))
                except EndOfPartition:
                    continue
                if value is None:
                    if polled or time.monotonic() >= deadline:
                        break
                    continue
                polled.append(value)
        except RetriableError:
            raise
        except Exception as error:  # noqa: BLE001 -- arroyo's transport errors: the broker is away
            if type(error).__name__ in ("TransportError", "ConsumerError"):
                raise RetriableError(f"{self.name.value}: {error}") from error
            raise
        with self._lock:
            # A revocation during this poll: what came from the lost partitions is the next owner's.
            polled = [value for value in polled if value.partition in self._assigned]
        deliveries = self._hand_out(consumer, polled)
        if deliveries:
            get_metrics().incr(INGESTION_MESSAGES_POLLED, len(deliveries), tags={"source": self.name.value})
        return deliveries

    def _hand_out(self, consumer: ArroyoConsumer[KafkaPayload], polled: list[BrokerValue[KafkaPayload]]) -> list[Delivery]:
        if not polled:
            return []
        ids: list[MessageId] = [(value.partition.topic.name, value.partition.index, value.offset) for value in polled]
        counts = self._attempts.count(ids)
        handed, rest = polled[: len(counts)], polled[len(counts) :]
        if rest:
            # After a suspect: rewind so that these come again, uncounted, next time.
            rewind: dict[Partition, int] = {}
            for value in rest:
                rewind.setdefault(value.partition, value.offset)
            consumer.seek(rewind)
        deliveries = []
        with self._lock:
            for value, attempts in zip(handed, counts):
                self._in_hand.setdefault(value.partition, set()).add(value.offset)
                deliveries.append(
                    Delivery(
                        payload=value.payload.value,
                        token=(value.partition, value.offset),
                        queue=value.partition.topic.name,
                        attempts=attempts,
                        key=f"{value.partition.topic.name}/{value.partition.index}/{value.offset}",
                    )
                )
        return deliveries

    def decode(self, delivery: Delivery, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> PluginEvent:
        return decode_kafka_message(delivery.payload, max_bytes, max_depth)

    # --- acknowledging ---------------------------------------------------------------
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        acked: list[MessageId] = []
        stale = 0
        with self._lock:
            for delivery in deliveries:
                partition, offset = delivery.token
                in_hand = self._in_hand.get(partition)
                if partition not in self._assigned or in_hand is None or offset not in in_hand:
                    stale += 1
                    continue
                in_hand.discard(offset)
                if offset + 1 > self._acked.get(partition, -1):
                    self._acked[partition] = offset + 1
                acked.append((partition.topic.name, partition.index, offset))
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

    def _commit(self, offsets: dict[Partition, int]) -> None:
        self._last_commit = time.monotonic()
        if not offsets or self._consumer is None:
            return
        self._consumer.stage_offsets(offsets)
        self._consumer.commit_offsets()
        self.committed.update(offsets)

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
            given_back = [(p.topic.name, p.index, offset) for p, offsets_in_hand in self._in_hand.items() for offset in offsets_in_hand]
            self._in_hand = {p: set() for p in self._in_hand}
        try:
            self._commit(offsets)
            self._attempts.take_back(given_back)
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
