"""The job consumer: runs due plugin jobs on this server's worker pool.

Only the holder of the Redis lock ``plugin-server:locks:job-queue-consumer``
(TTL ``SCHEDULE_LOCK_TTL``) polls, every ``JOB_POLL_INTERVAL`` seconds (at
once again after a full batch); it leases at most as many due jobs as it has
free slots (``JOBS_WORKERS`` threads × ``QUEUED_PER_THREAD``), so a busy
pool is never handed more than it can start soon. Each job runs as
``jobs[type](payload, meta)`` in the sandbox (``WorkerPool.run_job``).

Outcomes (docs/jobs.md):

- the job returns (or raises an ordinary error, recorded on the config by
  the pool as the original did): its row is deleted;
- it raises ``RetryError`` (or its worker died): run again after
  ``JOB_RETRY_BASE_SECONDS × 2^(attempt-1)``, up to ``JOB_MAX_ATTEMPTS``
  runs; each retry is a WARN line in the plugin's log, the final failure is
  recorded as the config's error (which also writes an ERROR line);
- its plugin config was deleted or disabled meanwhile: dropped with a log
  line (server log; and the plugin's log when the config still exists);
- the job name is not among the plugin's ``jobs``: recorded as the config's
  error and dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import DatabaseError, close_old_connections, connection

from plugin_server.exceptions import PluginError, RetryError, WorkerDied
from plugin_server.jobs import ClaimedJob, claim_due_jobs, finish_job, reschedule_job
from plugin_server.locks import JOB_QUEUE_LOCK_KEY, LockKeeper, RedisLock
from plugin_server.metrics import JOBS_DONE, JOBS_DROPPED, JOBS_FAILED, JOBS_RETRIED, JOBS_RUN, get_metrics
from plugin_server.models import PluginConfig
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.errors import record_plugin_error
from plugin_server.plugins.meta.logger import LogEntry, LogSource, LogType, store_log_entries
from plugin_server.service import Service, ServiceState
from plugin_server.slow import slow_operation

logger = logging.getLogger(__name__)

# Time a leased job has to finish before another claim may run it again, beyond the pool's job limit.
LEASE_MARGIN_SECONDS = 60.0
# Leased jobs waiting per job thread: enough to keep the thread busy between polls.
QUEUED_PER_THREAD = 2
NOT_IN_FORCE = "is not in force"


class JobPool(Protocol):
    """What the consumer needs of the WorkerPool."""

    def run_job(self, plugin_config_id: int, job_name: str, payload: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class JobSettings:
    """The consumer's knobs (settings: JOB_MAX_ATTEMPTS, JOB_RETRY_BASE_SECONDS, ...)."""

    max_attempts: int = 3
    retry_base: float = 5.0
    poll_interval: float = 0.2
    concurrency: int = 1
    lease: float = 180.0
    lock_ttl: float = 60.0

    @classmethod
    def from_config(cls) -> JobSettings:
        from plugin_server.config import get_config
        from plugin_server.workers.pool import TASK_TIMEOUT_FACTOR

        config = get_config()
        return cls(
            max_attempts=config.job_max_attempts,
            retry_base=config.job_retry_base_seconds,
            poll_interval=config.job_poll_interval,
            concurrency=config.jobs_workers,
            # A leased job may wait behind QUEUED_PER_THREAD others of its thread.
            lease=config.task_timeout * TASK_TIMEOUT_FACTOR * (QUEUED_PER_THREAD + 1) + LEASE_MARGIN_SECONDS,
            lock_ttl=config.schedule_lock_ttl,
        )


@dataclass(frozen=True, slots=True)
class _ConfigState:
    ctx: PluginContext
    enabled: bool


def _config_states(config_ids: Iterable[int]) -> dict[int, _ConfigState]:
    """The configs of a batch of jobs, in one query."""
    rows = PluginConfig.objects.filter(id__in=set(config_ids)).values_list("id", "plugin_id", "team_id", "plugin__name", "enabled")
    return {
        config_id: _ConfigState(PluginContext(config_id, plugin_id, team_id, name or ""), bool(enabled))
        for config_id, plugin_id, team_id, name, enabled in rows
    }


def _plugin_log(ctx: PluginContext, source: LogSource, type: LogType, message: str) -> None:
    store_log_entries([LogEntry.for_context(ctx, source, type, message)])


class JobConsumer(Service):
    """Polls for due jobs while holding the job-queue lock and runs them on the pool.

    ``concurrency`` threads (JOBS_WORKERS) run jobs from a queue the poller
    fills with at most ``QUEUED_PER_THREAD`` leased jobs per thread; when a
    poll found a full batch the next poll comes as soon as a slot frees, so a
    backlog drains at the pool's pace, not one batch per poll interval.
    """

    def __init__(self, pool: JobPool, keeper: LockKeeper | None = None, settings: JobSettings | None = None) -> None:
        super().__init__("job consumer")
        self.pool = pool
        self.settings = settings or JobSettings.from_config()
        self.keeper = keeper or LockKeeper(RedisLock(JOB_QUEUE_LOCK_KEY, self.settings.lock_ttl))
        self.capacity = self.settings.concurrency * QUEUED_PER_THREAD
        self._queue: queue.Queue[tuple[ClaimedJob, _ConfigState | None] | None] = queue.Queue()
        self._in_flight = 0
        self._changed = threading.Condition()
        # The job threads: supervised services too (a crash restarts them), started on the first lease.
        self._runners = [_JobRunner(self, index) for index in range(self.settings.concurrency)]
        self._drain_timeout = 30.0

    # --- one step ----------------------------------------------------------------------

    def poll_once(self) -> int:
        """Lease due jobs for the free slots and queue them; returns how many were leased."""
        if not self.keeper.held:
            return 0
        with self._changed:
            free = self.capacity - self._in_flight
        claimed = claim_due_jobs(free, self.settings.lease)
        if not claimed:
            return 0
        states = _config_states(job.job.plugin_config_id for job in claimed)
        for runner in self._runners:
            if runner.state is ServiceState.NEW:
                runner.start()
        with self._changed:
            self._in_flight += len(claimed)
        for job in claimed:
            self._queue.put((job, states.get(job.job.plugin_config_id)))
        return len(claimed)

    def work(self) -> None:
        """One job thread: run leased jobs until the queue hands it None."""
        try:
            while (item := self._queue.get()) is not None:
                try:
                    self._execute(*item)
                finally:
                    with self._changed:
                        self._in_flight -= 1
                        self._changed.notify_all()
        finally:
            connection.close()

    def in_flight(self) -> int:
        with self._changed:
            return self._in_flight

    def wait(self, timeout: float = 30.0) -> bool:
        """Wait for the leased jobs to finish; True when none is left."""
        with self._changed:
            return self._changed.wait_for(lambda: self._in_flight == 0, timeout)

    # --- one job -----------------------------------------------------------------------

    def _execute(self, claimed: ClaimedJob, state: _ConfigState | None) -> None:
        job = claimed.job
        extra = {"plugin_config_id": job.plugin_config_id, "team_id": job.plugin_config_team}
        started = time.perf_counter()
        try:
            if state is None or not state.enabled:
                why = "deleted" if state is None else "disabled"
                logger.warning("plugin job %s dropped: its plugin config %d was %s", job.type, job.plugin_config_id, why, extra=extra)
                if state is not None:
                    _plugin_log(state.ctx, "SYSTEM", "WARN", f"Job {job.type} dropped: the plugin config is disabled")
                finish_job(claimed)
                get_metrics().incr(JOBS_DROPPED)
                return
            with slow_operation(f"job {job.type} of plugin config {job.plugin_config_id}"):
                self._run(claimed, state.ctx)
        except DatabaseError:
            # The lease brings the job back once it runs out.
            logger.exception("plugin job %s: the job store failed; it runs again after its lease", job.type, extra=extra)
        finally:
            get_metrics().timing(JOBS_RUN, (time.perf_counter() - started) * 1000)

    def _run(self, claimed: ClaimedJob, ctx: PluginContext) -> None:
        job = claimed.job
        try:
            self.pool.run_job(job.plugin_config_id, job.type, job.payload)
        except RetryError as error:
            self._retry_or_fail(claimed, ctx, str(error) or "RetryError")
            return
        except WorkerDied as error:
            self._retry_or_fail(claimed, ctx, f"its worker died ({error})")
            return
        except PluginError as error:
            if NOT_IN_FORCE in str(error):
                # Enabled in the database but not loaded here yet: the reload is on its way.
                self._retry_or_fail(claimed, ctx, "the plugin config is not loaded on this server yet")
                return
            record_plugin_error(ctx, "PluginError", str(error))
            finish_job(claimed)
            return
        finish_job(claimed)
        get_metrics().incr(JOBS_DONE)

    def _retry_or_fail(self, claimed: ClaimedJob, ctx: PluginContext, reason: str) -> None:
        job = claimed.job
        limit = self.settings.max_attempts
        if job.attempt < limit:
            delay = self.settings.retry_base * 2 ** (job.attempt - 1)
            reschedule_job(claimed, delay)
            _plugin_log(ctx, "SYSTEM", "WARN",
                        f"Job {job.type} failed on attempt {job.attempt} of {limit}: {reason}; retrying in {delay:g} s")
            get_metrics().incr(JOBS_RETRIED)
            return
        finish_job(claimed)
        record_plugin_error(ctx, "RetryError", f"Job {job.type} failed after {limit} attempt{'s' if limit != 1 else ''}: {reason}")
        get_metrics().incr(JOBS_FAILED)

    # --- lifecycle ---------------------------------------------------------------------

    def children(self) -> tuple[Service, ...]:
        # The runners are not started with the consumer: only once a job is leased.
        return (self.keeper, *(runner for runner in self._runners if runner.state is not ServiceState.NEW))

    def run(self) -> None:
        try:
            while not self.stopping:
                try:
                    leased = self.poll_once()
                except DatabaseError:
                    logger.exception("job consumer: could not read due jobs")
                    close_old_connections()
                    leased = 0
                if leased and self.in_flight() >= self.capacity:
                    # A full batch: more may be due; poll again as soon as a slot frees.
                    with self._changed:
                        self._changed.wait_for(lambda: self._in_flight < self.capacity, self.settings.poll_interval)
                elif not leased:
                    self.sleep(self.settings.poll_interval)
        finally:
            connection.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling, release the lock, let the leased jobs finish."""
        self._drain_timeout = timeout
        super().stop(5.0)

    def cleanup(self) -> None:
        self.keeper.stop()
        if not self.wait(self._drain_timeout):
            logger.warning("plugin jobs still running at shutdown; they run again after their lease")
        running = [runner for runner in self._runners if runner.is_alive()]
        for runner in running:
            runner.request_stop()
            self._queue.put(None)
        for runner in running:
            runner.stop(1.0)


class _JobRunner(Service):
    """One of the job consumer's ``JOBS_WORKERS`` threads."""

    def __init__(self, consumer: JobConsumer, index: int) -> None:
        super().__init__(f"plugin-job-{index}")
        self._consumer = consumer

    def run(self) -> None:
        self._consumer.work()
