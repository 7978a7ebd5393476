"""One team's worker, seen from the pool: a lock, a lazily forked process, retries.

A :class:`TeamWorker` holds at most one
:class:`~plugin_server.workers.process.WorkerProcess` at a time, forked from
the zygote the first time the team needs it, configured with that team's
plugin configs only. :meth:`TeamWorker.run` runs one task on it under its
lock (a team worker runs one task at a time), serves the worker's meta
requests for that team's configs only, applies the worker's report, and
returns the task's value. A worker lost during a task is blamed through the
pool (:meth:`WorkerPool.blame`) and the task retried once on a fresh worker;
lost again, :class:`~plugin_server.exceptions.WorkerDied` goes to the caller
(the pool turns that into dead letters for the events whose plugins could
not run).

Every request carries a call id (meta requests and their replies are matched
by it), so that a worker running several calls at once, or JavaScript plugins
beside Python ones, can share the same pipe later.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, close_old_connections, connection

from plugin_server.exceptions import RETRY_FAILURE_PREFIX, MetaCallError, PluginError, RetryError, WorkerDied
from plugin_server.metrics import WORKER_REPLACED, WORKER_RETRY, WORKER_TASK, get_metrics
from plugin_server.service import Service
from plugin_server.workers.effects import apply_report
from plugin_server.workers.process import MetaServer, WorkerHung, WorkerProcess

if TYPE_CHECKING:
    from plugin_server.workers.pool import WorkerPool

logger = logging.getLogger(__name__)

# How long a retiring worker gets to tear its plugins down (5 s, as in the original).
TEARDOWN_SECONDS = 5.0


class Lane(Service):
    """One of the WORKER_CONCURRENCY threads that run team workers' tasks; a supervised service.

    Lanes share one bounded queue (a busy team does not hold up another
    team's work while a lane is free); a team worker's own lock keeps its
    tasks one at a time and in order.
    """

    def __init__(self, tasks: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None], index: int) -> None:
        super().__init__(f"plugin-lane-{index}")
        self.index = index
        self._tasks = tasks
        self.busy = False  # running a task now (the pool's utilization gauge)

    def backlog(self) -> int:
        """Tasks waiting for a lane (the queue is shared: lane 0 reports it)."""
        return self._tasks.qsize() if self.index == 0 else 0

    def run(self) -> None:
        """Run tasks until the pool queues None (after :meth:`request_stop`)."""
        try:
            while True:
                item = self._tasks.get()
                if item is None:
                    return
                work, future = item
                if not future.set_running_or_notify_cancel():
                    continue
                self.busy = True
                try:
                    future.set_result(work())
                except BaseException as error:  # noqa: BLE001 — the caller must hear of it, not hang
                    if not isinstance(error, (PluginError, WorkerDied)):
                        logger.exception("a plugin lane failed a task")
                    future.set_exception(error)
                finally:
                    self.busy = False
        finally:
            connection.close()


@dataclass
class Task:
    """One unit of work for a team worker."""

    kind: str
    payload: dict[str, Any]


class TeamWorker:
    """The worker process of one team and the lock that runs its tasks one at a time."""

    def __init__(self, pool: WorkerPool, team_id: int | None, index: int) -> None:
        self.pool = pool
        self.team_id = team_id
        # Its key in the pool's LRU: the team id, or ("export", team id) for the team's export worker.
        self.key: Any = team_id
        # Distinct among live team workers: the worker's user id is WORKER_UID_BASE + index.
        self.index = index
        self.lock = threading.Lock()
        self.worker: WorkerProcess | None = None
        self.tasks_done = 0
        # Configs this worker was ever told about: the only ones its reports and meta calls may name.
        self.known: set[int] = set()
        # Callers holding or waiting for it (guarded by the pool's lock): a pinned worker is not evicted.
        self.pins = 0
        self.retired = False

    # --- running -----------------------------------------------------------------------

    def run(self, kind: str, payload: dict[str, Any]) -> Any:
        """Run one task on this team's worker (started if needed); its value."""
        started = time.perf_counter()
        try:
            with self.lock:
                if self.retired:
                    raise WorkerDied(f"the worker of team {self.team_id} was retired")
                return self._execute(Task(kind, payload))
        finally:
            get_metrics().timing(WORKER_TASK.format(kind=kind), (time.perf_counter() - started) * 1000)
            close_old_connections()

    def _specs(self) -> dict[int, Any]:
        specs = self.pool.team_specs(self.team_id)
        self.known.update(specs)
        return specs

    def _ensure(self) -> WorkerProcess:
        if self.worker is None or not self.worker.alive():
            if self.worker is not None:
                # Died between tasks: blamed on the config that ran last, like a death during one
                # (unless the zygote died: its workers die with it, through no plugin's fault).
                blame = self.worker.blame("the worker died between tasks", hung=False)
                zygote_alive = self.worker.zygote.alive()
                self.replace("died")
                if zygote_alive:
                    self.pool.blame(blame, Task("idle", {}), self.team_id)
            settings = self.pool.settings
            worker = WorkerProcess(self.pool.forker(), self.index, self.pool.uid_of(self.index), settings.memory_limit_mb, settings.grace)
            self.worker = worker
            init = {"task_timeout": settings.task_timeout, "allowed_calls": self.pool.allowed_calls(),
                    "js_memory_mb": settings.js_memory_mb, "js_meta_calls_max": settings.js_meta_calls_max}
            for kind, payload in (("init", init), ("configure", {"specs": self._specs()})):
                self._report(worker.exchange(kind, payload, settings.task_timeout, self._meta_server()))
        return self.worker

    def configure(self) -> None:
        """Hand the worker (if running) the team's current configs, behind its in-flight work."""
        with self.lock:
            if self.worker is not None and self.worker.alive():
                self._execute(Task("configure", {"specs": self._specs()}))

    def replace(self, reason: str) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None
            get_metrics().incr(WORKER_REPLACED, 1, {"reason": reason})

    def retire(self, reason: str = "recycle") -> None:
        """Tear the plugins down (at most TEARDOWN_SECONDS), then stop the worker."""
        if self.worker is not None and self.worker.alive():
            worker = self.worker
            try:
                self._report(worker.exchange("stop", None, TEARDOWN_SECONDS, self._meta_server()))
            except WorkerDied as death:
                # A teardown_plugin that hung or killed the worker is that config's, like any other call.
                logger.warning("the worker of team %s did not stop cleanly: %s", self.team_id, death)
                self.pool.blame(worker.blame(str(death), hung=isinstance(death, WorkerHung)), Task("stop", {}), self.team_id)
            except DatabaseError:
                logger.warning("the worker of team %s stopped but its report could not be written", self.team_id)
        self.replace(reason)

    def _meta_server(self) -> MetaServer:
        def serve(config_id: int, api: str, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
            ctx = self.pool.context(config_id)
            if ctx is None or config_id not in self.known or ctx.team_id != self.team_id:
                raise MetaCallError(f"plugin config {config_id} is not running in this worker")
            if self.pool.host is None:
                raise MetaCallError(f"meta.{api} is not available here")
            return self.pool.host.call(ctx, api, method, args, kwargs)

        return serve

    def _report(self, result: dict[str, Any]) -> None:
        apply_report(self.pool.reporter, result, self.pool.context, self._allowed(), self.pool.on_system)

    def _allowed(self) -> Collection[int]:
        return self.known

    def _report_or_log(self, result: dict[str, Any]) -> None:
        """Apply a report; a database away must not throw the plugins' results away."""
        try:
            self._report(result)
        except DatabaseError:
            logger.exception("could not write a plugin worker's errors and logs", extra={"team_id": self.team_id})

    def _execute(self, task: Task) -> Any:
        settings = self.pool.settings
        for attempt in (1, 2):
            try:
                worker = self._ensure()
                # An export task's calls wait on meta concurrently: serve them concurrently too.
                executor = self.pool.meta_executor if task.kind == "on_events" else None
                result = worker.exchange(task.kind, task.payload, settings.task_timeout, self._meta_server(), executor)
                # A malformed report (ProtocolError, a WorkerDied) costs the worker, like a crash.
                self._report_or_log(result)
            except WorkerDied as death:
                worker_gone = self.worker
                # A worker that went down with its zygote is no plugin's fault: retried, blamed on no one.
                blamable = worker_gone is not None and worker_gone.zygote.alive()
                blame = worker_gone.blame(str(death), hung=isinstance(death, WorkerHung)) if blamable and worker_gone else None
                self.replace("hung" if blame and blame.hung else "died")
                logger.warning("the worker of team %s was lost during a %s task: %s", self.team_id, task.kind, death)
                retry = self.pool.blame(blame, task, self.team_id) if blame is not None else True
                if not retry or attempt == 2:
                    raise
                get_metrics().incr(WORKER_RETRY)
                continue
            self.tasks_done += 1
            if result.get("exit"):
                self.replace("exit")
            elif settings.max_tasks and self.tasks_done >= settings.max_tasks:
                self.tasks_done = 0
                self.retire()
            if "failure" in result:
                failure = str(result["failure"])
                if task.kind == "task" and failure.startswith(RETRY_FAILURE_PREFIX):
                    raise RetryError(failure[len(RETRY_FAILURE_PREFIX):])
                raise PluginError(failure)
            return result.get("value")
        raise WorkerDied("unreachable")
