"""The Source protocol: what the consumer loop needs from a queue.

The loop never knows which queue it reads (the Celery list on Redis now,
Kafka later). A source hands out raw :class:`~plugin_server.events.Delivery`
objects and takes them back as acknowledged once the batch they belong to is
durable (stored, dropped by a plugin, or dead-lettered). Anything not
acknowledged when the process dies is delivered again: at least once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from plugin_server.events import Delivery, SourceName


class Source(Protocol):
    """A queue the consumer loop polls in batches and acknowledges after the write."""

    name: SourceName

    def poll(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Up to ``max_messages`` messages; waits at most ``timeout`` seconds when none is ready."""
        ...

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Forget these messages for good: only after they are durable or dead-lettered."""
        ...

    def close(self) -> None:
        """Stop consuming; messages taken but not acknowledged go back to the queue."""
        ...
