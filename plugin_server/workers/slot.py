"""One worker of the pool, seen from the main process: its thread, queue and retries.

A :class:`WorkerSlot` owns one :class:`~plugin_server.workers.process.WorkerProcess`
at a time. Its thread takes :class:`Task` objects from a bounded queue, runs
each on the worker (starting, configuring or replacing it as needed), serves
the worker's meta requests, applies the worker's report, and resolves the
task's future. A worker lost during a task is blamed through the pool
(:meth:`WorkerPool.blame`) and the task is retried once on a fresh worker.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, close_old_connections, connection

from plugin_server.exceptions import RETRY_FAILURE_PREFIX, MetaCallError, PluginError, RetryError, WorkerDied
from plugin_server.metrics import WORKER_REPLACED, WORKER_RETRY, WORKER_TASK, get_metrics
from plugin_server.service import Service
from plugin_server.workers.effects import apply_report
from plugin_server.workers.process import WorkerHung, WorkerProcess

if TYPE_CHECKING:
    from plugin_server.workers.pool import WorkerPool

logger = logging.getLogger(__name__)

# How long a retiring worker gets to tear its plugins down (spec §2.4: 5 s).
TEARDOWN_SECONDS = 5.0


@dataclass
class Task:
    """One unit of work for a worker, and the future its caller waits on."""

    kind: str
    payload: dict[str, Any]
    allowed: Collection[int] | None
    future: concurrent.futures.Future[Any]


class WorkerSlot(Service):
    """One worker and the thread that talks to it (see the pool's docstring); a supervised service."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        super().__init__(f"plugin-worker-{index}")
        self.pool = pool
        self.index = index
        self.queue: queue.Queue[Task | None] = queue.Queue(maxsize=pool.settings.tasks_per_worker)
        self.worker: WorkerProcess | None = None
        self.tasks_done = 0
        self.busy = False  # running a task now (the pool's utilization gauge)

    def backlog(self) -> int:
        """Tasks waiting in this slot's queue."""
        return self.queue.qsize()

    def submit(self, kind: str, payload: dict[str, Any], allowed: Collection[int] | None) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.queue.put(Task(kind, payload, allowed, future))
        return future

    def run(self) -> None:
        """Run tasks until the pool queues None (after :meth:`request_stop`)."""
        try:
            while True:
                task = self.queue.get()
                if task is None:
                    return
                started = time.perf_counter()
                self.busy = True
                try:
                    task.future.set_result(self._execute(task))
                except (PluginError, WorkerDied) as error:
                    task.future.set_exception(error)
                except Exception as error:  # noqa: BLE001 — the caller must hear of it, not hang
                    logger.exception("plugin worker slot %d failed a %s task", self.index, task.kind)
                    task.future.set_exception(error)
                finally:
                    self.busy = False
                    get_metrics().timing(WORKER_TASK.format(kind=task.kind), (time.perf_counter() - started) * 1000)
                    close_old_connections()
        finally:
            connection.close()

    def _ensure(self) -> WorkerProcess:
        if self.worker is None or not self.worker.alive():
            if self.worker is not None:
                self.worker.kill()
            settings = self.pool.settings
            worker = WorkerProcess(self.index, settings.memory_limit_mb, self.pool.empty_dir, settings.grace)
            self.worker = worker
            init = {"task_timeout": settings.task_timeout, "allowed_calls": self.pool.allowed_calls()}
            for kind, payload in (("init", init), ("configure", {"specs": self.pool.inventory.specs})):
                self._report(worker.exchange(kind, payload, settings.task_timeout, self._meta_server(None)), None)
        return self.worker

    def replace(self, reason: str) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None
            get_metrics().incr(WORKER_REPLACED, 1, {"reason": reason})

    def retire(self) -> None:
        """Replace the worker after tearing its plugins down (WORKER_MAX_TASKS)."""
        if self.worker is not None:
            try:
                self._report(self.worker.exchange("stop", None, TEARDOWN_SECONDS, self._meta_server(None)), None)
            except WorkerDied:
                logger.warning("plugin worker %d did not stop cleanly when retired", self.index)
        self.replace("recycle")

    def _meta_server(self, allowed: Collection[int] | None) -> Any:
        def serve(config_id: int, api: str, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
            ctx = self.pool.context(config_id)
            if ctx is None or (allowed is not None and config_id not in allowed):
                raise MetaCallError(f"plugin config {config_id} is not running in this task")
            if self.pool.host is None:
                raise MetaCallError(f"meta.{api} is not available here")
            return self.pool.host.call(ctx, api, method, args, kwargs)

        return serve

    def _report(self, result: dict[str, Any], allowed: Collection[int] | None) -> None:
        apply_report(self.pool.reporter, result, self.pool.context, allowed, self.pool.on_system)

    def _report_or_log(self, result: dict[str, Any], allowed: Collection[int] | None) -> None:
        """Apply a report; a database away must not throw the plugins' results away."""
        try:
            self._report(result, allowed)
        except DatabaseError:
            logger.exception("could not write a plugin worker's errors and logs", extra={"worker": self.index})

    def _execute(self, task: Task) -> Any:
        settings = self.pool.settings
        for attempt in (1, 2):
            try:
                worker = self._ensure()
                result = worker.exchange(task.kind, task.payload, settings.task_timeout, self._meta_server(task.allowed))
                # A malformed report (ProtocolError, a WorkerDied) costs the worker, like a crash.
                self._report_or_log(result, task.allowed)
            except WorkerDied as death:
                worker_gone = self.worker
                blame = worker_gone.blame(str(death), hung=isinstance(death, WorkerHung)) if worker_gone else None
                self.replace("hung" if blame and blame.hung else "died")
                logger.warning("plugin worker %d lost during a %s task: %s", self.index, task.kind, death)
                if blame is not None and not self.pool.blame(blame, task) or attempt == 2:
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
