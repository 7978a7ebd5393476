"""The scheduler: ``run_every_minute`` / ``_hour`` / ``_day`` of every plugin config.

Clock: a task type is due when the UTC clock crosses its boundary (cron
``* * * * *``, ``0 * * * *``, ``0 0 * * *``). ``SCHEDULE_TIME_SCALE``
shrinks the periods for tests (a "minute" of 60 × scale seconds); the
boundaries are multiples of the period since the epoch, so every server
agrees on them.

Once across the cluster, twice over:

- only the holder of the Redis lock ``plugin-server:locks:schedule``
  (:class:`plugin_server.locks.LockKeeper`, TTL ``SCHEDULE_LOCK_TTL``)
  dispatches anything;
- before dispatching a boundary, the holder claims it with ``SET NX`` on
  ``plugin-server:schedule:<task>:<boundary>``: when the lock changes hands
  around a boundary (the old holder paused past its TTL), the boundary still
  runs once.

A run of (task, config) still going when the next boundary comes is
skipped, not doubled (and counted, ``scheduler.skipped``). Runs go to the
worker pool from a small thread pool; the pool applies the task time limit
(TASK_TIMEOUT × 4) and records a plugin's error on its config. The schedule
is the loaded plugins' (the pool's ``scheduled_tasks``), read at start and
after every reload (:meth:`Scheduler.load_schedule`), never straight from
the database.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

import redis
from django.db import connection

from plugin_server.exceptions import PluginError, WorkerDied
from plugin_server.locks import SCHEDULE_LOCK_KEY, LockKeeper, RedisLock
from plugin_server.metrics import SCHEDULER_RUN, SCHEDULER_SKIPPED, get_metrics
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.errors import record_plugin_error
from plugin_server.redis_client import get_redis
from plugin_server.service import Service
from plugin_server.slow import slow_operation

logger = logging.getLogger(__name__)

PERIODS: dict[str, float] = {"runEveryMinute": 60.0, "runEveryHour": 3_600.0, "runEveryDay": 86_400.0}
TICK_KEY_PREFIX = "plugin-server:schedule"
# Runs of different configs at once; one (task, config) never runs twice at once.
MAX_PARALLEL_RUNS = 4
STOP_WAIT_SECONDS = 30.0


class SchedulePool(Protocol):
    """What the scheduler needs of the WorkerPool."""

    def run_scheduled(self, plugin_config_id: int, task: str) -> None: ...

    def scheduled_tasks(self) -> dict[str, list[int]]: ...

    def context(self, config_id: int) -> PluginContext | None: ...


class Scheduler(Service):
    """Dispatches scheduled tasks on time while this process holds the schedule lock."""

    def __init__(
        self,
        pool: SchedulePool,
        keeper: LockKeeper | None = None,
        *,
        time_scale: float = 1.0,
        lock_ttl: float = 60.0,
        client: redis.Redis | None = None,
        clock: Callable[[], float] = time.time,
        key_prefix: str = TICK_KEY_PREFIX,
    ) -> None:
        super().__init__("scheduler")
        self.pool = pool
        self._redis = client or get_redis()
        self.keeper = keeper or LockKeeper(RedisLock(SCHEDULE_LOCK_KEY, lock_ttl, self._redis))
        self.periods = {task: period * time_scale for task, period in PERIODS.items()}
        self._clock = clock
        self._key_prefix = key_prefix
        self.schedule: dict[str, list[int]] | None = None
        self._last: dict[str, int] = {}
        self._running: dict[tuple[str, int], concurrent.futures.Future[None]] = {}
        self._running_lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(MAX_PARALLEL_RUNS, thread_name_prefix="scheduled-task")

    @classmethod
    def from_settings(cls, pool: SchedulePool) -> Scheduler:
        from plugin_server.config import get_config

        config = get_config()
        return cls(pool, time_scale=config.schedule_time_scale, lock_ttl=config.schedule_lock_ttl)

    # --- schedule ----------------------------------------------------------------------

    def load_schedule(self) -> dict[str, list[int]]:
        """Ask the pool which loaded configs export which scheduled task (after start and every reload)."""
        schedule = self.pool.scheduled_tasks()
        self.schedule = {task: list(schedule.get(task, [])) for task in PERIODS}
        logger.info("plugin schedule loaded: %s", {task: len(ids) for task, ids in self.schedule.items()})
        return self.schedule

    def boundary(self, task: str, now: float) -> int:
        """The index of the period of ``task`` that ``now`` falls in."""
        return int(now // self.periods[task])

    def tick(self, now: float | None = None) -> list[tuple[str, int]]:
        """Dispatch every task type whose boundary was crossed since the last tick; returns what was sent."""
        now = self._clock() if now is None else now
        sent: list[tuple[str, int]] = []
        for task in PERIODS:
            index = self.boundary(task, now)
            last = self._last.setdefault(task, index)
            if index <= last:
                continue
            self._last[task] = index
            if not self.keeper.held or self.schedule is None:
                continue
            if not self._claim(task, index):
                continue
            for config_id in self.schedule[task]:
                if self.dispatch(task, config_id):
                    sent.append((task, config_id))
        return sent

    def _claim(self, task: str, index: int) -> bool:
        ttl_ms = max(1_000, int(self.periods[task] * 2_000))
        try:
            return bool(self._redis.set(f"{self._key_prefix}:{task}:{index}", "1", nx=True, px=ttl_ms))
        except redis.RedisError:
            logger.warning("scheduler: could not claim %s boundary %d; skipped", task, index, exc_info=True)
            return False

    def dispatch(self, task: str, config_id: int) -> bool:
        """Start one run unless the previous run of the same task and config is still going."""
        key = (task, config_id)
        with self._running_lock:
            if key in self._running:
                get_metrics().incr(SCHEDULER_SKIPPED, 1, {"task": task})
                logger.info("%s of plugin config %d is still running; this run is skipped", task, config_id,
                            extra={"plugin_config_id": config_id})
                return False
            future = self._executor.submit(self._run, task, config_id)
            self._running[key] = future
        future.add_done_callback(lambda _done: self._forget(key))
        return True

    def _forget(self, key: tuple[str, int]) -> None:
        with self._running_lock:
            self._running.pop(key, None)

    def _run(self, task: str, config_id: int) -> None:
        started = time.perf_counter()
        try:
            with slow_operation(f"scheduled {task} of plugin config {config_id}"):
                self.pool.run_scheduled(config_id, task)
        except (PluginError, WorkerDied) as error:
            # A rejected dispatch: the plugin's own errors were recorded by the pool already.
            ctx = self.pool.context(config_id)
            logger.warning("%s of plugin config %d could not run: %s", task, config_id, error,
                           extra={"plugin_config_id": config_id})
            if ctx is not None:
                record_plugin_error(ctx, type(error).__name__, str(error))
        finally:
            get_metrics().timing(SCHEDULER_RUN.format(task=task), (time.perf_counter() - started) * 1000)
            # Runs are minutes apart: hold no connection between them.
            connection.close()

    def running(self) -> list[tuple[str, int]]:
        with self._running_lock:
            return list(self._running)

    def wait(self, timeout: float = STOP_WAIT_SECONDS) -> bool:
        """Wait for the runs in flight; True when none is left."""
        with self._running_lock:
            futures = list(self._running.values())
        _done, pending = concurrent.futures.wait(futures, timeout=timeout)
        return not pending

    # --- lifecycle ---------------------------------------------------------------------

    def children(self) -> tuple[LockKeeper]:
        return (self.keeper,)

    def prepare(self) -> None:
        """The lock keeper is started (a child); load the schedule and remember the current boundaries."""
        self.load_schedule()
        self.tick()  # remembers the current boundaries: nothing runs before the next one

    def run(self) -> None:
        """Tick on every boundary until stopped."""
        while True:
            now = self._clock()
            next_due = min((self.boundary(task, now) + 1) * period for task, period in self.periods.items())
            if self.sleep(max(0.0, next_due - now)):
                return
            try:
                self.tick()
            except Exception:  # noqa: BLE001 -- the clock must keep going whatever one tick met
                logger.exception("scheduler tick failed")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop ticking, release the lock, wait for the runs in flight."""
        super().stop(timeout)

    def cleanup(self) -> None:
        self.keeper.stop()
        if not self.wait():
            logger.warning("scheduled tasks still running at shutdown: %s", self.running())
        self._executor.shutdown(wait=False, cancel_futures=True)
