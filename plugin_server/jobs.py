"""The plugin job store (``meta.jobs``): django-q2 ONCE schedules in Postgres.

A job enqueued by a plugin becomes a ``django_q`` :class:`Schedule` row of
type ONCE whose ``next_run`` is the job's due time and whose ``args`` hold
the original's job object ``{type, payload, timestamp (epoch ms),
pluginConfigId, pluginConfigTeam}`` (plus ``attempt`` once it is retried).
The rows survive any restart: they are the queue.

They are run by the ``jobs`` role of ``run_plugin_server``
(:mod:`plugin_server.job_consumer`), which claims due rows with ``SELECT ...
FOR UPDATE SKIP LOCKED`` and hands them to its own worker pool: plugin code
only ever runs in a server's sandboxed workers, never in a django-q2
cluster process. The rows carry ``cluster = JOBS_CLUSTER``, a name no
django-q2 cluster has, so a ``qcluster`` started by mistake leaves them
alone (docs/jobs.md says why django-q2's own runner is not used).

Where the rows live: the ``plugin_jobs`` database when JOB_QUEUE_GRAPHILE_URL
names one (``plugin_server.routers.JobStoreRouter``), else ``default``. The
server checks the store at start (:func:`check_job_store`); when it cannot be
used, enqueueing is refused with the original's ``No JobQueue available``
(never a fallback to another database), or the server does not start at all
with CRASH_IF_NO_PERSISTENT_JOB_QUEUE.

A claim is a lease: ``next_run`` moves ``lease`` seconds ahead. A finished
job's row is deleted; a job whose server died while running it is claimed
again when the lease runs out (at least once, never two servers at a time).
"""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, router, transaction
from django_q.models import Schedule

from plugin_server.plugins.meta.context import PluginContext

logger = logging.getLogger(__name__)

JOB_FUNCTION = "plugin_server.jobs.execute_job"
JOBS_CLUSTER = "plugin-server (run_plugin_server jobs role)"
NO_JOB_QUEUE = "No JobQueue available"
PERSISTENT_QUEUE = "graphile"


class JobStoreUnavailable(Exception):
    """The job store could not be used at start: jobs are refused until the server restarts."""


_store_problem: str | None = None


def job_store_alias() -> str:
    """The database alias of the job store (``plugin_jobs`` with JOB_QUEUE_GRAPHILE_URL)."""
    return router.db_for_write(Schedule) or DEFAULT_DB_ALIAS


def check_job_store(job_queues: tuple[str, ...]) -> str | None:
    """Why no job can be stored (None: the store answers); a query on the store's table."""
    if PERSISTENT_QUEUE not in job_queues:
        return f"JOB_QUEUES={','.join(job_queues) or '(empty)'} names no persistent job queue ({PERSISTENT_QUEUE!r})"
    alias = job_store_alias()
    try:
        Schedule.objects.using(alias).filter(func=JOB_FUNCTION).exists()
    except DatabaseError as error:
        return f"the job store (database {alias!r}) cannot be used: {type(error).__name__}: {str(error).strip()}"
    return None


def set_job_store_problem(problem: str | None) -> None:
    """Record the start-up check's verdict: jobs are refused while a problem is set."""
    global _store_problem
    _store_problem = problem


def job_store_problem() -> str | None:
    return _store_problem


@dataclass(frozen=True, slots=True)
class PluginJob:
    """One enqueued job, as the original's job queue carried it."""

    type: str
    payload: Any
    timestamp: int  # due time, epoch milliseconds
    plugin_config_id: int
    plugin_config_team: int | None
    attempt: int = 1  # (port) which run this is; retries count up

    def to_json(self) -> str:
        job = {
            "type": self.type,
            "payload": self.payload,
            "timestamp": self.timestamp,
            "pluginConfigId": self.plugin_config_id,
            "pluginConfigTeam": self.plugin_config_team,
        }
        if self.attempt > 1:
            job["attempt"] = self.attempt
        return json.dumps(job, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> PluginJob:
        job = json.loads(text)
        return cls(
            type=job["type"],
            payload=job.get("payload"),
            timestamp=int(job["timestamp"]),
            plugin_config_id=int(job["pluginConfigId"]),
            plugin_config_team=job.get("pluginConfigTeam"),
            attempt=int(job.get("attempt", 1)),
        )


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A due job this server leased: ``row_id`` finishes or reschedules it."""

    row_id: int
    job: PluginJob


def _args(job: PluginJob) -> str:
    # django-q2 reads args with ast.literal_eval: a one-string tuple is safe for any JSON.
    return repr((job.to_json(),))


def enqueue_job(ctx: PluginContext, name: str, payload: Any, run_at: datetime) -> PluginJob:
    """Store a job due at ``run_at``; raises DatabaseError if the store is away."""
    if _store_problem is not None:
        raise JobStoreUnavailable(f"{NO_JOB_QUEUE}: {_store_problem}")
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
        args=_args(job),
        schedule_type=Schedule.ONCE,
        repeats=-1,
        next_run=run_at,
        cluster=JOBS_CLUSTER,
    )
    logger.debug("plugin job enqueued", extra={"plugin_config_id": ctx.plugin_config_id, "team_id": ctx.team_id})
    return job


def _jobs() -> Any:
    return Schedule.objects.filter(func=JOB_FUNCTION, cluster=JOBS_CLUSTER)


def claim_due_jobs(limit: int, lease: float, now: datetime | None = None) -> list[ClaimedJob]:
    """Lease at most ``limit`` due jobs, oldest due first: one SELECT and one UPDATE.

    A row that cannot be decoded is deleted with an error log line (it could
    never run, and keeping it would block nothing but clutter the store)."""
    if limit <= 0:
        return []
    now = now or datetime.now(timezone.utc)
    claimed: list[ClaimedJob] = []
    broken: list[int] = []
    with transaction.atomic(using=job_store_alias()):
        rows = list(
            _jobs().select_for_update(skip_locked=True).filter(next_run__lte=now).order_by("next_run", "id").values_list("id", "args")[:limit]
        )
        for row_id, args in rows:
            try:
                (text,) = ast.literal_eval(args)
                claimed.append(ClaimedJob(row_id, PluginJob.from_json(text)))
            except (ValueError, TypeError, KeyError, SyntaxError) as error:
                logger.error("plugin job row %d cannot be read (%s); deleted: %r", row_id, error, args[:200])
                broken.append(row_id)
        if claimed:
            _jobs().filter(id__in=[job.row_id for job in claimed]).update(next_run=now + timedelta(seconds=lease))
        if broken:
            Schedule.objects.filter(id__in=broken).delete()
    return claimed


def finish_job(claimed: ClaimedJob) -> None:
    """The job ran (or is dropped for good): its row goes."""
    _jobs().filter(id=claimed.row_id).delete()


def reschedule_job(claimed: ClaimedJob, delay: float) -> PluginJob:
    """Run the job again ``delay`` seconds from now, as its next attempt."""
    job = replace(claimed.job, attempt=claimed.job.attempt + 1)
    _jobs().filter(id=claimed.row_id).update(args=_args(job), next_run=datetime.now(timezone.utc) + timedelta(seconds=delay))
    return job


def pending_jobs() -> int:
    """How many jobs are stored (due or not)."""
    return int(_jobs().count())


def execute_job(job_json: str) -> None:
    """What a django-q2 cluster would call: refused, plugin jobs run in the server's sandbox only."""
    raise RuntimeError(
        "plugin jobs are run by `./manage.py run_plugin_server` (mode all or jobs), not by a django-q2 cluster"
    )
