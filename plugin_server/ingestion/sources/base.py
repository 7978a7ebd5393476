"""The Source protocol: what the consumer loop needs from a queue.

The loop never knows which queue it reads: the Celery list on Redis
(:mod:`.celery`), Kafka (:mod:`.kafka`) or the in-memory broker of the
tests (:mod:`.memory`). A source owns everything that depends on the queue:

- **taking**: ``poll`` hands out raw :class:`~plugin_server.events.Delivery`
  objects, in the queue's order;
- **decoding**: ``decode`` turns one into the event the capture endpoint
  sent (a Celery task, a Kafka message), or raises
  :class:`~plugin_server.exceptions.InvalidMessage` with a stable reason;
- **acknowledging**: ``ack`` takes deliveries back once the batch they
  belong to is durable (stored, dropped by a plugin, or dead-lettered), in
  the order they were polled. Anything not acknowledged when the process
  dies is delivered again: at least once;
- **losing messages to another consumer**: a partitioned source whose
  partitions are taken away (a rebalance) lets the batches in hand from
  them finish first (bounded wait), commits them, and never commits a
  delivery acknowledged after that (the new owner processes it again, the
  event uuid makes that harmless); the Celery source requeues a dead
  consumer's in-flight messages;
- **replaying a dead letter**: ``replay`` puts raw messages back on their
  queue, as the producer would have, so they run the whole pipeline again.

``start`` joins the queue (subscribes, announces the consumer); ``close``
leaves it, and what was taken but not acknowledged goes back.

The poison-pill contract
------------------------
At least once means a message that kills the process (a crash in a C
extension, the kernel's OOM killer, a bug that takes the loop down) would
come back after every restart and kill it again, blocking the queue for
good. Every source therefore honours four rules, so that the consumer can
recognise such a message and dead-letter it as ``poison`` instead:

1. **Count.** ``Delivery.attempts`` is how many times this message has been
   handed out, this time included (1 on the first delivery). The count of
   earlier hand-outs lives in the source's own durable store, so it survives
   the death of the process, and is up to date before the message is handed
   out again. A source may count each hand-out as it happens (Kafka: per
   partition and offset, at poll) or learn of it when a dead consumer's
   messages are recovered (Celery: the script that puts them back counts
   them, in a Redis hash of the queue; the take script reads it). A message
   is never counted while it merely waits in a buffer of the source.
2. **Suspects alone.** A message with ``attempts > 1`` was in hand when a
   process died. ``poll`` hands it out alone (a batch of one); messages it
   would have handed out after it wait, uncounted, for the next poll. So a
   killer takes down no neighbour twice, and a neighbour's count never
   reaches the limit because of someone else.
3. **Forget on ack.** ``ack`` forgets the count of the messages it
   acknowledges (a message published again later starts from 1).
4. **Not a crash.** ``close`` gives unacknowledged messages back without
   counting this hand-out: a graceful stop is not a crash.

``Delivery.key`` is the message's identity, the same on every delivery
(Celery: the SHA-1 of its bytes; Kafka: ``topic/partition/offset``); a
source may leave it empty on a first delivery (``attempts == 1``), for which
the consumer notes nothing. The consumer uses it to note durably which stage a suspect was in (decode,
plugins, store) before each risky step, so that the dead letter of a
``poison`` message says where the process died.

The consumer (``plugin_server/ingestion/consumer.py``) does the rest: a
delivery with ``attempts > POISON_MAX_ATTEMPTS`` is dead-lettered as
``poison`` without being decoded; a suspect below that is processed on its
own, never alongside another batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from plugin_server.events import Delivery, PluginEvent, SourceName
from plugin_server.ingestion.decode import DEFAULT_MAX_DEPTH




class Source(Protocol):
    """A queue the consumer loop polls in batches and acknowledges after the write.

    Implementations honour the poison-pill contract of this module."""

    name: SourceName

    def start(self) -> None:
        """Join the queue (idempotent)."""
        ...

    def poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Up to ``max_messages`` messages; waits at most ``timeout`` seconds when none is ready.

        Each delivery carries its durable ``attempts`` count; one with
        ``attempts > 1`` comes alone."""
        ...

    def decode(self, delivery: Delivery, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> PluginEvent:
        """The event a delivery carries; raises InvalidMessage (with its reason) when it carries none.

        ``max_bytes`` bounds the message, ``max_depth`` how deeply the event may nest."""
        ...

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Forget these messages and their counts for good: only after they are durable or dead-lettered."""
        ...

    def replay(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Put raw messages ``(queue, payload)`` back on their queue; durable when it returns."""
        ...

    def close(self) -> None:
        """Stop consuming; messages taken but not acknowledged go back, their count taken back."""
        ...
