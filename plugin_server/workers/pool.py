"""The worker pool: plugin code of every team, in isolated worker processes.

``WORKER_CONCURRENCY`` workers (0 = one per core). Each has a slot in the
main process: a thread that owns the worker's pipes, takes tasks from a
bounded queue (``TASKS_PER_WORKER``: a full queue blocks the caller, which
is the back-pressure), runs them one at a time, and serves the worker's
meta requests while it waits. Work is routed by ``(team_id, distinct_id)``:
one person's events always go to the same worker, in order, while other
persons run in parallel. A batch costs one message per worker, not one
per event; teams with no plugin in force never reach a worker.

Failure handling: a worker that dies (memory limit, crash) or hangs (no
answer by the running call's deadline + ``grace``; SIGKILL) is replaced.
The plugin config whose call was running, read from the worker's progress
marker, gets the error recorded (a death during set-up disables it, spec
§2.2) and the batch is retried once on the new worker with that one call
skipped. If the retry fails too, the events go on unchanged: nothing is lost.

Reload (``PLUGINS_RELOAD_PUBSUB_CHANNEL``) re-reads the plugin configs and
queues a ``configure`` task behind each worker's in-flight work; unchanged
configs keep their instances, changed or removed ones are torn down.

Metrics (names in plugin_server/metrics.py): ``piscina_task.<kind>``
(timing of one task), ``worker.replaced`` (tag ``reason``), ``worker.retry``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from plugin_server.config import get_config
from plugin_server.events import PluginEvent
from plugin_server.exceptions import PluginError, WorkerDied
from plugin_server.plugins.inventory import CodeCache, Inventory, load_inventory
from plugin_server.plugins.lifecycle import SCHEDULE_KEYS, SETUP_ITEM
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.errors import PluginErrorRecord
from plugin_server.workers.effects import Reporter
from plugin_server.workers.process import Blame, WorkerProcess
from plugin_server.workers.slot import TEARDOWN_SECONDS, Task, WorkerSlot

logger = logging.getLogger(__name__)

# Scheduled tasks and jobs may run this many times TASK_TIMEOUT (the job
# cluster's own timeout is the same multiple).
TASK_TIMEOUT_FACTOR = 4
_TASK_NAMES = {**{camel: snake for snake, camel in SCHEDULE_KEYS.items()}, **{snake: snake for snake in SCHEDULE_KEYS}}


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """The pool's knobs, resolved from the settings unless given."""

    concurrency: int
    tasks_per_worker: int
    task_timeout: float
    memory_limit_mb: int
    max_tasks: int
    base_dir: str
    grace: float = 2.0

    @classmethod
    def from_config(cls, **overrides: Any) -> PoolSettings:
        config = get_config()
        values: dict[str, Any] = {
            "concurrency": config.worker_concurrency or os.cpu_count() or 1,
            "tasks_per_worker": config.tasks_per_worker,
            "task_timeout": config.task_timeout,
            "memory_limit_mb": config.worker_memory_limit_mb,
            "max_tasks": config.worker_max_tasks,
            "base_dir": config.base_dir,
        }
        values.update(overrides)
        return cls(**values)


class WorkerPool:
    """Runs plugins for the consumer, the scheduler and the job queue (see docs/architecture.md)."""

    def __init__(self, settings: PoolSettings | None = None, host: Any = None, reporter: Reporter | None = None) -> None:
        self.settings = settings or PoolSettings.from_config()
        # A host the pool made is the pool's to close (log buffer, capture producer, fetch connections).
        self._owns_host = host is None and reporter is None
        if self._owns_host:
            from plugin_server.plugins.meta.host import MetaHost

            host = MetaHost()
        self.host = host
        self.reporter = reporter or Reporter(host)
        self.inventory = Inventory()
        self.empty_dir = ""
        self._code_cache = CodeCache(self.settings.base_dir)
        self._methods: dict[int, frozenset[str]] = {}
        # Every config ever loaded: a worker may still report on a removed one (its teardown).
        self._contexts: dict[int, PluginContext] = {}
        # Configs set up (or blamed) since they last changed: their error is no longer cleared on set-up.
        self._loaded: set[int] = set()
        self._lock = threading.Lock()
        self._slots: list[WorkerSlot] = []

    # --- state --------------------------------------------------------------------------

    def allowed_calls(self) -> dict[str, list[str]]:
        from plugin_server.plugins.meta.host import ALLOWED_CALLS

        return {api: sorted(methods) for api, methods in ALLOWED_CALLS.items()}

    def context(self, config_id: int) -> PluginContext | None:
        return self._contexts.get(config_id)

    def on_system(self, what: str, config_id: int, news: dict[str, Any]) -> bool:
        """Learn from a worker's set-up news; True for the first "loaded" of a config."""
        if what == "loaded" and isinstance(news.get("methods"), list):
            self._methods[config_id] = frozenset(str(name) for name in news["methods"])
            first = config_id not in self._loaded
            self._loaded.add(config_id)
            return first
        if what == "setup_failed":
            self._drop(config_id)
        return False

    def _drop(self, config_id: int) -> None:
        """Take a disabled config out of the chains at once, without waiting for a reload."""
        with self._lock:
            inventory = self.inventory
            chains = {team: tuple(c for c in ids if c != config_id) for team, ids in inventory.chains.items()}
            self.inventory = Inventory(inventory.specs, inventory.contexts, {t: ids for t, ids in chains.items() if ids})

    def blame(self, blame: Blame, task: Task) -> bool:
        """Record a lost worker on the config it was running; True if the task should be retried."""
        ctx = self.context(blame.plugin_config_id)
        if ctx is None:
            return task.kind != "task"
        events = task.payload.get("events") or []
        event = events[blame.item] if task.kind == "process" and 0 <= blame.item < len(events) else None
        seconds = self.settings.task_timeout
        message = (
            f"Script execution timed out after running for {seconds:g} second{'s' if seconds != 1 else ''}; its worker was stopped"
            if blame.hung
            else f"The plugin's worker process died (over the {self.settings.memory_limit_mb} MB memory limit, or crashed)"
        )
        self._loaded.add(ctx.plugin_config_id)
        self.reporter.errors([PluginErrorRecord(ctx=ctx, message=message, name="PluginTimeout" if blame.hung else "WorkerDied", event=event)])
        if blame.item == SETUP_ITEM:
            self.reporter.disable(ctx, message)
            self._drop(ctx.plugin_config_id)
        if task.kind == "process" and blame.item >= 0:
            skip = task.payload.setdefault("skip", {})
            skip.setdefault(blame.item, set()).add(ctx.plugin_config_id)
        return task.kind != "task"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, inventory: Inventory | None = None) -> None:
        """Read the plugin configs and start the workers (plugins are set up lazily).

        ``inventory`` replaces reading the database (``run_plugin`` runs a
        plugin that is not installed)."""
        self.empty_dir = tempfile.mkdtemp(prefix="plugin-worker-root-")
        os.chmod(self.empty_dir, 0o555)
        self.inventory = inventory if inventory is not None else load_inventory(self._code_cache)
        self._contexts.update(self.inventory.contexts)
        self._slots = [WorkerSlot(self, index) for index in range(max(1, self.settings.concurrency))]
        futures = []
        for slot in self._slots:
            slot.start()
            futures.append(slot.submit("hello", {"name": f"worker {slot.index}"}, ()))
        for future in futures:
            future.result()
        self.reporter.flush()

    def reload(self) -> None:
        """Re-read the plugin configs; in-flight work finishes first in each worker."""
        inventory = load_inventory(self._code_cache)
        with self._lock:
            unchanged = {
                config_id
                for config_id, spec in inventory.specs.items()
                if config_id in self.inventory.specs and self.inventory.specs[config_id].version == spec.version
            }
            self._loaded &= unchanged
            self.inventory = inventory
            self._contexts.update(inventory.contexts)
            self._methods = {cid: names for cid, names in self._methods.items() if cid in unchanged}
            futures = [slot.submit("configure", {"specs": inventory.specs}, None) for slot in self._slots]
        self._wait(futures)

    def stop(self) -> None:
        """Tear every plugin down (at most 5 s, spec §2.4), then stop the workers."""
        futures = [slot.submit("teardown", {"cfgs": None}, None) for slot in self._slots]
        concurrent.futures.wait(futures, timeout=TEARDOWN_SECONDS)
        for slot in self._slots:
            slot.request_stop()
            try:
                slot.queue.put(None, timeout=TEARDOWN_SECONDS)
            except queue.Full:
                logger.warning("plugin worker slot %d is still busy at shutdown", slot.index)
        for slot in self._slots:
            slot.stop(TEARDOWN_SECONDS)
            slot.replace("stop")
        self._slots = []
        self.reporter.flush()
        if self._owns_host:
            self.host.close()
        if self.empty_dir:
            shutil.rmtree(self.empty_dir, ignore_errors=True)

    def _wait(self, futures: Iterable[concurrent.futures.Future[Any]]) -> list[Any]:
        results = [future.result() for future in futures]
        self.reporter.flush()
        return results

    # --- work ------------------------------------------------------------------------------

    def _wants(self, config_ids: tuple[int, ...], methods: tuple[str, ...]) -> bool:
        """False only when every config is known to export none of ``methods``."""
        for config_id in config_ids:
            known = self._methods.get(config_id)
            if known is None or any(name in known for name in methods):
                return True
        return False

    def _route(
        self, events: list[PluginEvent], methods: tuple[str, ...], snapshot_methods: tuple[str, ...]
    ) -> dict[int, list[int]]:
        """Indexes of the events that need a worker, grouped by worker.

        ``methods`` are the exports that make an event worth sending,
        ``snapshot_methods`` the same for ``$snapshot`` events (none: they skip).
        """
        chains = self.inventory.chains
        groups: dict[int, list[int]] = {}
        count = len(self._slots)
        for index, event in enumerate(events):
            wanted = snapshot_methods if event.get("event") == "$snapshot" else methods
            chain = chains.get(event.get("team_id"))  # type: ignore[arg-type]
            if chain and wanted and self._wants(chain, wanted):
                key = hash((event.get("team_id"), str(event.get("distinct_id"))))
                groups.setdefault(key % count, []).append(index)
        return groups

    def _dispatch(self, kind: str, events: list[PluginEvent], groups: dict[int, list[int]]) -> dict[int, concurrent.futures.Future[Any]]:
        chains = self.inventory.chains
        futures = {}
        for worker_index, indexes in groups.items():
            batch = [events[index] for index in indexes]
            teams = {event.get("team_id") for event in batch}
            team_chains = {team: chains[team] for team in teams if team in chains}
            allowed = {config_id for chain in team_chains.values() for config_id in chain}
            payload = {"chains": team_chains, "events": batch}
            futures[worker_index] = self._slots[worker_index].submit(kind, payload, allowed)
        return futures

    def process_events(self, events: list[PluginEvent]) -> list[PluginEvent]:
        """Run every team's ``process_event`` chain; returns the surviving events in input order.

        ``$snapshot`` events are not sent to plugins here: only ``on_snapshot`` sees them.
        """
        # $snapshot events skip process_event (ingestion.md §2 step 1).
        groups = self._route(events, ("process_event", "process_event_batch"), ())
        if not groups:
            return events
        results: list[PluginEvent | None] = list(events)
        for worker_index, future in self._dispatch("process", events, groups).items():
            indexes = groups[worker_index]
            try:
                value = future.result()
            except (PluginError, WorkerDied):
                logger.exception("plugins could not run on %d events; they go on unchanged", len(indexes))
                continue
            if not isinstance(value, list) or len(value) != len(indexes):
                logger.error("a worker answered %d events with %r; they go on unchanged", len(indexes), type(value))
                continue
            for index, processed in zip(indexes, value):
                if processed is None:
                    results[index] = None
                elif isinstance(processed, dict) and processed.get("team_id") == events[index].get("team_id"):
                    results[index] = processed
                else:
                    # The worker is untrusted: it must not move an event to another team.
                    logger.error("a worker returned an invalid event; dropped", extra={"team_id": events[index].get("team_id")})
                    results[index] = None
        self.reporter.flush()
        return [event for event in results if event is not None]

    def process_event_batch(self, events: list[PluginEvent]) -> list[PluginEvent]:
        """Spec §4.2: each plugin's ``process_event_batch`` on each team's events."""
        groups = self._route(events, ("process_event_batch", "process_event"), ())
        passed = [event for index, event in enumerate(events) if not any(index in group for group in groups.values())]
        kept = [event for future in self._dispatch("process_batch", events, groups).values() for event in future.result()]
        self.reporter.flush()
        return passed + [event for event in kept if isinstance(event, dict)]

    def on_events(self, events: list[PluginEvent]) -> None:
        """``on_event`` / ``on_snapshot`` for stored events; waits until they ran."""
        groups = self._route(events, ("on_event",), ("on_snapshot",))
        for future in self._dispatch("on_events", events, groups).values():
            try:
                future.result()
            except (PluginError, WorkerDied):
                logger.exception("on_event could not run on some events")
        self.reporter.flush()

    def _task(self, config_id: int, kind: str, name: str, payload: Any) -> Any:
        if config_id not in self.inventory.specs:
            raise PluginError(f"Plugin config {config_id} is not in force")
        slot = self._slots[hash(config_id) % len(self._slots)]
        limit = self.settings.task_timeout * TASK_TIMEOUT_FACTOR
        task = {"cfg": config_id, "kind": kind, "name": name, "payload": payload, "limit": limit}
        try:
            return slot.submit("task", task, (config_id,)).result()
        finally:
            self.reporter.flush()

    def run_scheduled(self, plugin_config_id: int, task: str) -> Any:
        """Run ``run_every_minute`` / ``runEveryMinute`` ... of one config; its return value (vm.test "runEvery")."""
        if task not in _TASK_NAMES:
            raise PluginError(f'Task "{task}" not found')
        return self._task(plugin_config_id, "schedule", _TASK_NAMES[task], None)

    def run_job(self, plugin_config_id: int, job_name: str, payload: Any) -> Any:
        """Run job ``job_name``; raises PluginError when the config has no such job."""
        return self._task(plugin_config_id, "job", job_name, payload)

    def scheduled_tasks(self) -> dict[str, list[int]]:
        """``{"runEveryMinute": [config ids], "runEveryHour": [...], "runEveryDay": [...]}``."""
        result = self._slots[0].submit("schedule", {}, None).result()
        self.reporter.flush()
        return {key: [int(cid) for cid in result.get(key, [])] for key in SCHEDULE_KEYS.values()}

    def slots(self) -> list[WorkerSlot]:
        """The worker slots: supervised services, one per worker (health in /_ready)."""
        return list(self._slots)

    def workers(self) -> list[WorkerProcess | None]:
        """The current worker processes (for health checks and tests)."""
        return [slot.worker for slot in self._slots]
