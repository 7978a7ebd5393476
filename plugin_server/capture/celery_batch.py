"""kombu's Redis transport, with the messages of one request pushed in one round trip.

(And :class:`QuickReprAMQP`, Celery's message builder with a cheaper
``argsrepr`` header.)

Celery's ``send_task`` builds each message (headers, protocol-2 body,
envelope) and hands it to the channel's ``_put``, which ``LPUSH``es it at
once: one Redis round trip per event. Inside :meth:`BatchingChannel.batch`
``_put`` only collects the finished envelopes, and leaving the block pushes
them all with one ``LPUSH`` (one per list, in a MULTI/EXEC when there are
several priorities), in send order
(the consumer pops from the other end, so the first sent is the first
taken). Everything else (routing, queue declaration, the envelope's bytes)
is kombu's and Celery's own, so the messages are exactly those PostHog's
Celery client sends. If the push fails nothing of the batch is on the queue
and the error reaches the caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery.app.amqp import AMQP
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps


class BatchingChannel(kombu_redis.Channel):
    """A Redis channel whose puts can be gathered into one push."""

    _pending: list[tuple[str, str]] | None = None
    _batch_client: Any = None

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if self._pending is None:
            super()._put(queue, message, **kwargs)
            return
        priority = self._get_message_priority(message, reverse=False)
        self._pending.append((self._q_for_pri(queue, priority), dumps(message)))  # type: ignore[attr-defined]  # not in the stubs

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Messages published inside are pushed together when the block ends without error."""
        if self._pending is not None:
            raise RuntimeError("batches do not nest")
        pending: list[tuple[str, str]] = []
        self._pending = pending
        try:
            yield
        finally:
            self._pending = None
        if not pending:
            return
        by_list: dict[str, list[str]] = {}
        for key, body in pending:
            by_list.setdefault(key, []).append(body)
        client = self._batch_client
        if client is None:
            # One client per channel: kombu makes a new one (and its callback table) per put.
            client = self._batch_client = self._create_client()  # type: ignore[attr-defined]  # not in the stubs
        if len(by_list) == 1:
            [(key, bodies)] = by_list.items()
            client.lpush(key, *bodies)  # one command: atomic on its own
            return
        pipe = client.pipeline(transaction=True)
        for key, bodies in by_list.items():
            pipe.lpush(key, *bodies)
        pipe.execute()


class BatchingTransport(kombu_redis.Transport):
    """kombu's Redis transport using :class:`BatchingChannel`."""

    Channel = BatchingChannel


ARGSREPR_MAX = 1024  # Celery's task_argsrepr_maxsize


def args_repr(args: object) -> str:
    """``repr`` cut to Celery's 1,024 characters."""
    text = repr(args)
    return text if len(text) <= ARGSREPR_MAX else text[: ARGSREPR_MAX - 3] + "..."


class QuickReprAMQP(AMQP):
    """Celery's message builder, with the ``argsrepr``/``kwargsrepr`` headers made by ``repr``.

    Those headers are for monitoring tools and no consumer reads them;
    Celery's ``saferepr`` walks the arguments in Python and cost a third of
    the endpoint's CPU per event. Everything else of the message is Celery's.
    """

    def as_task_v2(self, task_id: str, name: str, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        if options.get("argsrepr") is None:
            options["argsrepr"] = args_repr(args if args is not None else ())
        if options.get("kwargsrepr") is None:
            options["kwargsrepr"] = args_repr(kwargs if kwargs is not None else {})
        return super().as_task_v2(task_id, name, args, kwargs, *rest, **options)
