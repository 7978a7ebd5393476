"""``meta.jobs``: a plugin enqueues its own jobs.

``meta.jobs.<name>(payload)`` in the worker gives a runner whose
``run_now()``, ``run_in(...)`` and ``run_at(when)`` arrive here as
``jobs.run_now / run_in / run_at`` with the job name and payload first.
``run_in`` takes the original's ``(duration, unit)`` or Python keywords
(``seconds=30``, ``minutes=5``, ...). The name is not checked against the
plugin's ``jobs``: an unknown name fails when the job runs, as in the
original. A payload that JSON cannot hold is refused with a clear error that
also goes to the plugin's log.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from django.db import DatabaseError

from plugin_server.exceptions import MetaCallError
from plugin_server.jobs import NO_JOB_QUEUE, JobStoreUnavailable, PluginJob, enqueue_job
from plugin_server.metrics import JOBS_REFUSED, get_metrics
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.logger import LogEntry, PluginLogWriter

logger = logging.getLogger(__name__)

MAX_NAME_CHARS = 200
MAX_PAYLOAD_BYTES = 1_048_576
# The original's units. It made a month 30 weeks and a quarter 13 weeks (a
# bug); the port uses 30, 91 and 365 days.
UNIT_SECONDS: dict[str, float] = {
    "milliseconds": 0.001,
    "seconds": 1,
    "minutes": 60,
    "hours": 3_600,
    "days": 86_400,
    "weeks": 604_800,
    "months": 30 * 86_400,
    "quarters": 91 * 86_400,
    "years": 365 * 86_400,
}


def unit_seconds(unit: object) -> float:
    """Seconds in one ``unit``; singular names are accepted."""
    if isinstance(unit, str):
        name = unit if unit in UNIT_SECONDS else f"{unit}s"
        if name in UNIT_SECONDS:
            return UNIT_SECONDS[name]
    raise MetaCallError(f"Unknown time unit: {unit}")


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        raise MetaCallError(f"jobs: {what} must be a number of at least 0, not {value!r}")
    return float(value)


def parse_due_time(when: object) -> datetime:
    """A due time from a datetime, an ISO 8601 text or epoch milliseconds (a JS Date's value)."""
    if isinstance(when, datetime):
        moment = when
    elif isinstance(when, str):
        try:
            moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            raise MetaCallError(f"jobs: run_at needs a datetime or ISO 8601 text, not {when!r}") from None
    elif isinstance(when, (int, float)) and not isinstance(when, bool):
        try:
            moment = datetime.fromtimestamp(when / 1000, tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise MetaCallError(f"jobs: run_at time out of range: {when!r}") from None
    else:
        raise MetaCallError(f"jobs: run_at needs a datetime or ISO 8601 text, not {type(when).__name__}")
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class PluginJobs:
    """Serves ``meta.jobs``; refusals of a payload are also written to the plugin's log."""

    def __init__(self, log_writer: PluginLogWriter) -> None:
        self._log_writer = log_writer

    def run_now(self, ctx: PluginContext, name: str, payload: Any = None) -> None:
        self._enqueue(ctx, name, payload, datetime.now(timezone.utc))

    def run_in(
        self,
        ctx: PluginContext,
        name: str,
        payload: Any = None,
        duration: float | None = None,
        unit: str | None = None,
        *,
        milliseconds: float = 0,
        seconds: float = 0,
        minutes: float = 0,
        hours: float = 0,
        days: float = 0,
        weeks: float = 0,
    ) -> None:
        keywords = {"milliseconds": milliseconds, "seconds": seconds, "minutes": minutes, "hours": hours, "days": days, "weeks": weeks}
        if duration is not None:
            if any(keywords.values()):
                raise MetaCallError("jobs: run_in takes (duration, unit) or keywords such as seconds=, not both")
            delay = _number(duration, "duration") * unit_seconds(unit)
        else:
            if unit is not None:
                raise MetaCallError("jobs: run_in got a unit without a duration")
            delay = sum(_number(value, key) * UNIT_SECONDS[key] for key, value in keywords.items())
        try:
            due = datetime.now(timezone.utc) + timedelta(seconds=delay)
        except OverflowError:
            raise MetaCallError("jobs: run_in delay out of range") from None
        self._enqueue(ctx, name, payload, due)

    def run_at(self, ctx: PluginContext, name: str, payload: Any, when: Any) -> None:
        self._enqueue(ctx, name, payload, parse_due_time(when))

    def _enqueue(self, ctx: PluginContext, name: object, payload: Any, due: datetime) -> PluginJob:
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
            raise MetaCallError(f"jobs: the job name must be a string of 1 to {MAX_NAME_CHARS} characters")
        problem = None
        try:
            size = len(json.dumps(payload).encode())
        except (TypeError, ValueError) as error:
            problem = f"Job {name}: the payload is not JSON-serialisable ({error})"
        else:
            if size > MAX_PAYLOAD_BYTES:
                problem = f"Job {name}: the payload is larger than {MAX_PAYLOAD_BYTES} bytes"
        if problem:
            self._log_writer.add(LogEntry.for_context(ctx, "PLUGIN", "ERROR", problem))
            raise MetaCallError(problem)
        try:
            return enqueue_job(ctx, name, payload, due)
        except (JobStoreUnavailable, DatabaseError) as error:
            # The job is lost: say so where the plugin's author looks.
            reason = str(error) if isinstance(error, JobStoreUnavailable) else f"{NO_JOB_QUEUE}: the job store failed ({type(error).__name__})"
            refusal = f"Job {name} was not enqueued. {reason}"
            self._log_writer.add(LogEntry.for_context(ctx, "PLUGIN", "ERROR", refusal))
            get_metrics().incr(JOBS_REFUSED)
            logger.error("plugin job refused: %s", refusal, extra={"plugin_config_id": ctx.plugin_config_id, "team_id": ctx.team_id})
            raise MetaCallError(refusal) from error
