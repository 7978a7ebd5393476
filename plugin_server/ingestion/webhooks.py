"""Webhook tasks for stored events.

For an event of a team that "should send webhooks" (a Slack webhook or an
``action_performed`` hook, see :class:`~plugin_server.ingestion.teams.TeamManager`),
PostHog's own Celery workers do the posting: the server only sends the task
``posthog.tasks.webhooks.post_event_to_webhook`` with ``[event id, site_url]``
(Postgres pipeline) or ``ee.tasks.webhooks_ee.post_event_to_webhook_ee`` with
``[{event, properties, distinct_id, timestamp, elements_chain}, team_id,
site_url]`` (Kafka pipeline: there is no event row to point at) to ``CELERY_DEFAULT_QUEUE``, through Celery itself so the message is
exactly what those workers expect.

Tasks are sent after the batch committed, all on one producer connection.
Sending is best effort, as in the original: if Redis refuses, the failure
is logged and counted (``hooks.send_task_failed``) and the stored events
stay stored; re-delivering the batch would not help, since its events
would be skipped as already stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from plugin_server.config import get_config
from plugin_server.metrics import HOOKS_SEND_TASK, HOOKS_SEND_TASK_FAILED, get_metrics
from plugin_server.redis_client import redis_url

logger = logging.getLogger(__name__)

WEBHOOK_TASK = "posthog.tasks.webhooks.post_event_to_webhook"
WEBHOOK_EE_TASK = "ee.tasks.webhooks_ee.post_event_to_webhook_ee"
METRIC_SENT = HOOKS_SEND_TASK
METRIC_FAILED = HOOKS_SEND_TASK_FAILED


class CeleryWebhooks:
    """Sends webhook tasks with a Celery app made on first use (none is made when no team has hooks)."""

    def __init__(self, broker_url: str | None = None, queue: str | None = None) -> None:
        self._broker_url = broker_url
        self._queue = queue
        self._app: Any = None

    def send(self, calls: Sequence[tuple[int, str | None]]) -> None:
        """One task per (posthog_event id, site_url); never raises for a broker failure."""
        self._send(WEBHOOK_TASK, [[event_id, site_url] for event_id, site_url in calls])

    def send_ee(self, calls: Sequence[tuple[dict[str, Any], int, str | None]]) -> None:
        """Kafka pipeline: one ``post_event_to_webhook_ee`` task per (event, team id, site_url), where the
        event is ``{event, properties, distinct_id, timestamp (ISO), elements_chain}``; never raises."""
        self._send(WEBHOOK_EE_TASK, [list(call) for call in calls])

    def _send(self, task: str, calls: Sequence[list[Any]]) -> None:
        if not calls:
            return
        queue = self._queue or get_config().celery_default_queue
        try:
            app = self._celery()
            with app.producer_or_acquire() as producer:
                for args in calls:
                    app.send_task(task, args=args, kwargs={}, queue=queue, producer=producer)
        except Exception:  # noqa: BLE001 -- any broker failure; the events are already stored
            logger.exception("could not send %d webhook tasks", len(calls))
            get_metrics().incr(METRIC_FAILED, len(calls))
            return
        get_metrics().incr(METRIC_SENT, len(calls))

    def _celery(self) -> Any:
        if self._app is None:
            from celery import Celery

            # Fail fast rather than retry for minutes while a batch waits.
            self._app = Celery("plugin-server-webhooks", broker=self._broker_url or redis_url(), set_as_current=False)
            self._app.conf.broker_connection_retry = False
            self._app.conf.broker_transport_options = {"max_retries": 1}
        return self._app
