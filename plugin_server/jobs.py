"""Plugin jobs (``meta.jobs``): stored as django-q2 schedules that run once.

A job enqueued by a plugin becomes a ``django_q`` :class:`Schedule` of type
ONCE whose ``next_run`` is the job's due time and whose function is
:func:`execute_job`. django-q2 deletes a ONCE schedule after starting it and
``Q_CLUSTER["max_attempts"]`` is 1, which keeps the original's semantics: a
job runs once, at or after its due time, and is not retried (spec:
plugins.md §11). The job itself is the original's JSON object
``{type, payload, timestamp (epoch ms), pluginConfigId, pluginConfigTeam}``.

Only enqueueing lives here for now; running a job (the worker pool's
``run_job``) is wired in by :func:`set_job_runner`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from django_q.models import Schedule

from plugin_server.plugins.meta.context import PluginContext

logger = logging.getLogger(__name__)

JOB_FUNCTION = "plugin_server.jobs.execute_job"


@dataclass(frozen=True, slots=True)
class PluginJob:
    """One enqueued job, as the original's job queue carried it."""

    type: str
    payload: Any
    timestamp: int  # due time, epoch milliseconds
    plugin_config_id: int
    plugin_config_team: int | None

    def to_json(self) -> str:
        return json.dumps(
            {
                "type": self.type,
                "payload": self.payload,
                "timestamp": self.timestamp,
                "pluginConfigId": self.plugin_config_id,
                "pluginConfigTeam": self.plugin_config_team,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> PluginJob:
        job = json.loads(text)
        return cls(
            type=job["type"],
            payload=job.get("payload"),
            timestamp=int(job["timestamp"]),
            plugin_config_id=int(job["pluginConfigId"]),
            plugin_config_team=job.get("pluginConfigTeam"),
        )


def enqueue_job(ctx: PluginContext, name: str, payload: Any, run_at: datetime) -> PluginJob:
    """Store a job due at ``run_at``; raises DatabaseError if the store is away."""
    if run_at.tzinfo is None:
        run_at = run_at.replace(tzinfo=timezone.utc)
    job = PluginJob(
        type=name,
        payload=payload,
        timestamp=int(run_at.timestamp() * 1000),
        plugin_config_id=ctx.plugin_config_id,
        plugin_config_team=ctx.team_id,
    )
    Schedule.objects.create(
        name=f"plugin job {name} for config {ctx.plugin_config_id}"[:100],
        func=JOB_FUNCTION,
        # django-q2 reads args with ast.literal_eval: a one-string tuple is safe for any JSON.
        args=repr((job.to_json(),)),
        schedule_type=Schedule.ONCE,
        repeats=-1,
        next_run=run_at,
    )
    logger.debug("plugin job enqueued", extra={"plugin_config_id": ctx.plugin_config_id, "team_id": ctx.team_id})
    return job


_runner: Callable[[PluginJob], None] | None = None


def set_job_runner(runner: Callable[[PluginJob], None] | None) -> None:
    """Install what runs a due job in this process (the server hands jobs to its worker pool)."""
    global _runner
    _runner = runner


def execute_job(job_json: str) -> None:
    """django-q2's entry point for a due job."""
    job = PluginJob.from_json(job_json)
    if _runner is None:
        raise RuntimeError("no plugin job runner is installed in this process")
    _runner(job)
