"""The Kafka producer of the Kafka pipeline: the original's batching rules over librdkafka.

One :class:`BatchingProducer` per server process serves the Kafka sink
(events, recordings, persons), the plugin log writer and ``posthog.capture``.
A message's size is the byte length of its value (4 for a null value).

- ``queue``: if the buffered bytes plus this message would exceed
  ``KAFKA_MAX_MESSAGE_BATCH_SIZE``, the buffer is sent first. A message
  larger than the limit on its own is then sent alone at once (the
  original dropped it); any other starts the new buffer. After appending,
  the buffer is sent if more than ``KAFKA_FLUSH_FREQUENCY_MS`` passed since
  the last send or it holds ``KAFKA_PRODUCER_MAX_QUEUE_SIZE`` messages (0:
  every message is sent at once).
- A timer thread sends every ``KAFKA_FLUSH_FREQUENCY_MS`` too.
- "Send" hands the buffer to librdkafka (which delivers it in the
  background); :meth:`flush` sends and then waits for the broker's
  acknowledgement of *every* message queued so far, and raises
  :class:`~plugin_server.exceptions.RetriableError` if one was not
  delivered. The consumer acknowledges (commits) a batch only after that.

Metrics (the original's names): ``query.kafka_send`` (timing of one send)
and ``query.kafka_send.total`` (messages sent); ``kafka_queue.delivery_failed``
(port) counts messages the broker did not take.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer

from plugin_server.exceptions import RetriableError
from plugin_server.metrics import KAFKA_DELIVERY_FAILED, QUERY_KAFKA_SEND, TOTAL_SUFFIX, get_metrics

logger = logging.getLogger(__name__)

NULL_VALUE_SIZE = 4


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    topic: str
    key: str | None
    value: bytes | None

    @property
    def size(self) -> int:
        return NULL_VALUE_SIZE if self.value is None else len(self.value)


class BatchingProducer:
    """Buffers messages by the original's rules and tells when they are acknowledged; thread-safe."""

    def __init__(
        self,
        producer: Producer,
        *,
        max_queue_size: int,
        max_batch_bytes: int,
        flush_frequency_ms: float,
        clock: Callable[[], float] = time.monotonic,
        flush_timeout: float = 30.0,
    ) -> None:
        self._producer = producer
        self.max_queue_size = max_queue_size
        self.max_batch_bytes = max_batch_bytes
        self.flush_frequency = flush_frequency_ms / 1000.0
        self._clock = clock
        self._flush_timeout = flush_timeout
        self._lock = threading.RLock()
        self._buffer: list[OutgoingMessage] = []
        self._buffered_bytes = 0
        self._last_send = clock()
        self._errors: list[str] = []
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self.sends = 0

    # --- buffering -------------------------------------------------------
    def queue(self, topic: str, key: str | None, value: bytes | None) -> None:
        """Buffer one message, sending by the size, count and time rules."""
        message = OutgoingMessage(topic, key, value)
        with self._lock:
            if self._buffered_bytes + message.size > self.max_batch_bytes:
                self._send_locked()
                if message.size > self.max_batch_bytes:
                    # Larger than a whole batch: on its own, never dropped.
                    self._buffer.append(message)
                    self._buffered_bytes = message.size
                    self._send_locked()
                    return
            self._buffer.append(message)
            self._buffered_bytes += message.size
            if self._clock() - self._last_send > self.flush_frequency or len(self._buffer) >= self.max_queue_size:
                self._send_locked()

    @property
    def buffered(self) -> list[OutgoingMessage]:
        with self._lock:
            return list(self._buffer)

    def send(self) -> None:
        """Hand the buffer to librdkafka now (nothing happens for an empty buffer)."""
        with self._lock:
            self._send_locked()

    def _send_locked(self) -> None:
        self._last_send = self._clock()
        if not self._buffer:
            return
        messages, self._buffer, self._buffered_bytes = self._buffer, [], 0
        started = time.perf_counter()
        for message in messages:
            self._produce(message)
        self._producer.poll(0)
        self.sends += 1
        metrics = get_metrics()
        metrics.timing(QUERY_KAFKA_SEND, (time.perf_counter() - started) * 1000)
        metrics.incr(QUERY_KAFKA_SEND + TOTAL_SUFFIX, len(messages))

    def _produce(self, message: OutgoingMessage) -> None:
        while True:
            try:
                self._producer.produce(message.topic, value=message.value, key=message.key, on_delivery=self._delivered)
                return
            except BufferError:
                # librdkafka's own queue is full: let it deliver, then try again.
                self._producer.poll(0.1)

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self._errors.append(f"{message.topic()}: {error}")

    # --- durability ------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Send the buffer and wait until the broker acknowledged every message queued so far.

        Raises RetriableError if some message was not delivered (or not in
        ``timeout`` seconds): the caller must not acknowledge its batch."""
        with self._lock:
            self._send_locked()
            remaining = self._producer.flush(self._flush_timeout if timeout is None else timeout)
            errors, self._errors = self._errors, []
        if errors or remaining:
            get_metrics().incr(KAFKA_DELIVERY_FAILED, len(errors) + remaining)
            first = errors[0] if errors else f"{remaining} messages still undelivered"
            raise RetriableError(f"Kafka did not acknowledge {len(errors) + remaining} messages: {first}")

    # --- timer -----------------------------------------------------------------------
    def start(self) -> None:
        """Send what is buffered every ``KAFKA_FLUSH_FREQUENCY_MS`` from a thread (idempotent)."""
        if self._timer is None:
            self._timer = threading.Thread(target=self._tick, name="kafka-producer-timer", daemon=True)
            self._timer.start()

    def _tick(self) -> None:
        while not self._stop.wait(max(self.flush_frequency, 0.01)):
            try:
                with self._lock:
                    if self._clock() - self._last_send >= self.flush_frequency:
                        self._send_locked()
                    self._producer.poll(0)
            except Exception:  # noqa: BLE001 -- the timer must outlive one failed send
                logger.exception("kafka producer: timed send failed")

    def close(self, timeout: float = 10.0) -> None:
        """Stop the timer and deliver what is left (shutdown)."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=5)
            self._timer = None
        try:
            self.flush(timeout)
        except RetriableError:
            logger.exception("kafka producer: messages undelivered at shutdown")


_shared: BatchingProducer | None = None
_shared_lock = threading.Lock()


def shared_producer() -> BatchingProducer:
    """The process's producer (made on first use from the KAFKA_* settings, timer started)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            from plugin_server.config import get_config
            from plugin_server.kafka_client import producer_settings

            config = get_config()
            _shared = BatchingProducer(
                Producer(producer_settings()),
                max_queue_size=config.kafka_producer_max_queue_size,
                max_batch_bytes=config.kafka_max_message_batch_size,
                flush_frequency_ms=config.kafka_flush_frequency_ms,
            )
            _shared.start()
        return _shared


def existing_producer() -> BatchingProducer | None:
    """The process's producer if one was made, else None (makes none)."""
    return _shared


def close_shared_producer() -> None:
    """Deliver and forget the process's producer (server shutdown, tests)."""
    global _shared
    with _shared_lock:
        producer, _shared = _shared, None
    if producer is not None:
        producer.close()
