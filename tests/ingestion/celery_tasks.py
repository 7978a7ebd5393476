"""Sending ``process_event_with_plugins`` tasks the way PostHog does: a real Celery client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from celery import Celery
from django.conf import settings

from plugin_server.events import CELERY_TASK_NAME
from plugin_server.ingestion.sources.celery import CelerySource


@contextmanager
def celery_app(protocol: int = 2) -> Iterator[Celery]:
    """A Celery producer on the test Redis (REDIS_URL), speaking message ``protocol``."""
    app = Celery("posthog-test-producer", broker=settings.REDIS_URL)
    app.conf.task_protocol = protocol
    try:
        yield app
    finally:
        app.close()


def task_args(
    data: dict[str, Any] | None = None,
    distinct_id: Any = "my-id",
    team_id: Any = 2,
    ip: str | None = "127.0.0.1",
    site_url: str = "http://localhost",
    now: str | None = None,
    sent_at: str | None = None,
) -> list[Any]:
    """The 7 positional args of the task, as PostHog's capture endpoint builds them."""
    return [
        distinct_id,
        ip,
        site_url,
        data if data is not None else {"event": "$pageview", "properties": {}},
        team_id,
        now or datetime.now(timezone.utc).isoformat(),
        sent_at,
    ]


def send_event_task(app: Celery, queue: str, args: list[Any], name: str = CELERY_TASK_NAME) -> str:
    """Push one task onto ``queue``; returns its task id."""
    return str(app.send_task(name, args=args, queue=queue).id)


def die(source: CelerySource) -> None:
    """What a SIGKILL amounts to for a consumer: its heartbeat stops and its key is gone; nothing is closed or acknowledged."""
    source.heartbeat.stop()
    source._redis.delete(source._alive_key)
