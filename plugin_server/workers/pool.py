"""The worker pool: each team's plugins in a worker process of that team's own.

A worker process only ever holds the plugins, configs, attachments,
``meta.global_``, events and log lines of one team, so whatever a plugin
reaches, even past the sandbox, belongs to its own team. Team workers are
forked from the plugin zygote (:class:`~plugin_server.workers.process.Zygote`:
imports done, hardening prepared, no credentials, no team data) when a team
first needs one, a few milliseconds instead of a fresh interpreter, and kept
in a bounded LRU (``TEAM_WORKERS_MAX``): the least recently used idle one is
retired (its plugins torn down) to make room. With ``INGESTION_PROCESSES``
above one there is one zygote for the whole server: the main process's pool
owns it (started when a team worker is first needed) and its broker forks
the ingestion processes' team workers from it
(plugin_server/workers/zygote_broker.py); their pools reach it through a
control socket of their own (``zygote_fd``) and give their workers users of
their own range (``uid_offset``).

``WORKER_CONCURRENCY`` (0 = one per core) is how many team workers run a
task at the same time: a batch's teams are fanned out over that many
threads, and a caller (consumer, scheduler, job queue) waits when all are
busy. A team worker runs one task at a time; at most ``TASKS_PER_WORKER``
tasks per running thread may be queued, a caller beyond waits (the
back-pressure). Work is routed by team:
each team's part of a batch goes to its worker in one message, in order, so
one person's events stay in order; teams with no plugin in force never
reach a worker.

Failure handling (:class:`~plugin_server.workers.team_worker.TeamWorker`):
a worker that dies (memory limit, crash) or hangs (no answer by the running
call's deadline + ``grace``; SIGKILL) is replaced. The plugin config whose
call was running (or ran last), read from the worker's progress marker and
checked to be of that team, gets the error recorded and counted: a death
during set-up, or ``WORKER_LOSSES_TO_DISABLE`` losses, disables it. The task
is retried once on a fresh worker with that call skipped; if the worker is
lost again, :meth:`WorkerPool.process_events` raises
:class:`~plugin_server.exceptions.PluginsNotRun` naming those events and why
(the consumer dead-letters them), with every other team's results: no event
is ever stored without its plugins having run.

Exports (:meth:`WorkerPool.export`, driven by the export lane,
plugin_server/export_lane.py) of a team whose plugins also have
``process_event`` work run on the team's *export worker*: a second process
of the same team in the same LRU, so a slow ``on_event`` never holds up
that team's ``process_event`` work (a team with exports only uses its one
worker).

Reload (``PLUGINS_RELOAD_PUBSUB_CHANNEL``) re-reads the plugin configs and
hands each live team worker its team's configs behind its in-flight work;
unchanged configs keep their instances, changed or removed ones are torn
down; a team left without plugins has its worker retired.

Metrics (names in plugin_server/metrics.py): ``piscina_task.<kind>``
(timing of one task), ``worker.replaced`` (tag ``reason``), ``worker.retry``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import resource
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from plugin_server.config import get_config
from plugin_server.events import PluginEvent
from plugin_server.exceptions import PluginError, PluginsNotRun, WorkerDied
from plugin_server.plugins.inventory import CodeCache, Inventory, load_inventory
from plugin_server.plugins.lifecycle import SCHEDULE_KEYS, SETUP_ITEM, ConfigSpec
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.errors import PluginErrorRecord
from plugin_server.plugins.meta.logger import LogEntry, server_instance_id
from plugin_server.workers import exports
from plugin_server.workers.effects import Reporter
from plugin_server.workers.hardening import WORKER_UID_BASE
from plugin_server.workers.process import Blame, Forker, WorkerProcess, Zygote
from plugin_server.workers.zygote_broker import ZygoteBroker, ZygoteClient
from plugin_server.workers.team_worker import TEARDOWN_SECONDS, Lane, Task, TeamWorker

logger = logging.getLogger(__name__)

# Scheduled tasks and jobs may run this many times TASK_TIMEOUT (the job
# cluster's own timeout is the same multiple).
TASK_TIMEOUT_FACTOR = 4
_TASK_NAMES = {**{camel: snake for snake, camel in SCHEDULE_KEYS.items()}, **{snake: snake for snake in SCHEDULE_KEYS}}
# A plugin can only export a scheduled task under one of these names, so a
# config whose source holds none of them needs no worker to say it has none.
_SCHEDULE_NAMES = tuple(SCHEDULE_KEYS) + tuple(SCHEDULE_KEYS.values())
DISABLED_AFTER_LOSSES = "Plugin was disabled: its calls hung or killed its worker {losses} times (instance ID {instance})."


# Open files the main process holds per live team worker: two pipes, a pidfd, the progress marker's map.
FDS_PER_TEAM_WORKER = 4


def _allow_open_files(needed: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE towards ``needed`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            logger.warning("RLIMIT_NOFILE %d is too low for TEAM_WORKERS_MAX (needs %d open files)", hard, needed)


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """The pool's knobs, resolved from the settings unless given."""

    concurrency: int
    tasks_per_worker: int
    task_timeout: float
    memory_limit_mb: int
    max_tasks: int
    base_dir: str
    team_workers_max: int = 256
    losses_to_disable: int = 3
    grace: float = 2.0
    js_memory_mb: int = 128
    js_meta_calls_max: int = 1000

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
            "team_workers_max": config.team_workers_max,
            "losses_to_disable": config.worker_losses_to_disable,
            "js_memory_mb": config.js_plugin_memory_limit_mb,
            "js_meta_calls_max": config.js_plugin_meta_calls_max,
        }
        values.update(overrides)
        return cls(**values)


class WorkerPool:
    """Runs plugins for the consumer, the scheduler and the job queue (see docs/architecture.md)."""

    def __init__(
        self, settings: PoolSettings | None = None, host: Any = None, reporter: Reporter | None = None,
        zygote_fd: int | None = None, uid_offset: int = 0,
    ) -> None:
        self.settings = settings or PoolSettings.from_config()
        # An ingestion process of INGESTION_PROCESSES > 1: team workers come from the main process's zygote.
        self._client = ZygoteClient(zygote_fd) if zygote_fd is not None else None
        self._broker: ZygoteBroker | None = None
        self._lazy_zygote = False
        self.uid_offset = uid_offset
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
        # Workers lost in a config's calls since it last changed (WORKER_LOSSES_TO_DISABLE).
        self._losses: dict[int, int] = {}
        self._specs_by_team: dict[int | None, dict[int, ConfigSpec]] = {}
        self._lock = threading.Lock()
        # Keyed by team id; a team's export worker (see export()) by ("export", team id).
        self._teams: OrderedDict[Any, TeamWorker] = OrderedDict()
        self._free_indexes: list[int] = []
        self._next_index = 0
        self._zygote: Zygote | None = None
        self._zygote_lock = threading.Lock()
        self._lanes: list[Lane] = []
        self._queue: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = queue.Queue()
        self._retiring: list[threading.Thread] = []
        # Serves the meta requests of export tasks, whose calls wait on them concurrently (threads start on demand).
        self.meta_executor = exports.meta_executor(self.settings.concurrency, self.settings.tasks_per_worker)

    # --- state --------------------------------------------------------------------------

    def allowed_calls(self) -> dict[str, list[str]]:
        from plugin_server.plugins.meta.host import ALLOWED_CALLS

        return {api: sorted(methods) for api, methods in ALLOWED_CALLS.items()}

    def context(self, config_id: int) -> PluginContext | None:
        return self._contexts.get(config_id)

    def team_specs(self, team_id: int | None) -> dict[int, ConfigSpec]:
        """The configs in force of one team: all a team worker is ever told."""
        return dict(self._specs_by_team.get(team_id, {}))

    def uid_of(self, index: int) -> int:
        return WORKER_UID_BASE + self.uid_offset + index

    def forker(self) -> Forker:
        """What forks this pool's team workers: its own zygote, or the main process's through the broker."""
        return self._client if self._client is not None else self.zygote()

    def share_zygote(self, processes: int = 1) -> ZygoteBroker:
        """The main process of INGESTION_PROCESSES > 1: its zygote serves the ingestion processes too
        (plugin_server/workers/zygote_broker.py), and starts only when a team worker is first needed.

        The broker holds a pidfd for each team worker of the ``processes`` ingestion processes."""
        per_process = max(self.settings.team_workers_max, self.settings.concurrency)
        _allow_open_files((FDS_PER_TEAM_WORKER + processes) * per_process + 256)
        self._lazy_zygote = True
        if self._broker is None:
            self._broker = ZygoteBroker(self.zygote)
        return self._broker

    def zygote(self) -> Zygote:
        """This process's zygote, (re)started if it is not running."""
        if self._client is not None:
            raise WorkerDied("this pool's team workers come from the main process's zygote")
        with self._zygote_lock:
            if self._zygote is None or not self._zygote.alive():
                if self._zygote is not None:
                    logger.warning("the plugin zygote died; starting a new one")
                    self._zygote.close()
                self._zygote = Zygote(self.empty_dir)
                if self._zygote.skipped:
                    logger.warning("the plugin zygote runs without some isolation layers: %s", ", ".join(sorted(self._zygote.skipped)))
            return self._zygote

    def _set_inventory(self, inventory: Inventory) -> None:
        by_team: dict[int | None, dict[int, ConfigSpec]] = {}
        for config_id, spec in inventory.specs.items():
            by_team.setdefault(spec.team_id, {})[config_id] = spec
        self.inventory = inventory
        self._specs_by_team = by_team
        self._contexts.update(inventory.contexts)

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

    def blame(self, blame: Blame, task: Task, team_id: int | None) -> bool:
        """Record a lost worker on the config it was running (or ran last); True if the task should be retried.

        The marker is written by the (untrusted) worker: a config that is not
        of the worker's team is not blamed.
        """
        ctx = self.context(blame.plugin_config_id)
        if ctx is None or ctx.team_id != team_id:
            return task.kind != "task"
        events = task.payload.get("events") or []
        event = events[blame.item] if task.kind == "process" and 0 <= blame.item < len(events) else None
        seconds = self.settings.task_timeout
        message = (
            f"Script execution timed out after running for {seconds:g} second{'s' if seconds != 1 else ''}; its worker was stopped"
            if blame.hung
            else f"The plugin's worker process died (over the {self.settings.memory_limit_mb} MB memory limit, or crashed)"
        )
        config_id = ctx.plugin_config_id
        self._loaded.add(config_id)
        losses = self._losses[config_id] = self._losses.get(config_id, 0) + 1
        self.reporter.errors([PluginErrorRecord(ctx=ctx, message=message, name="PluginTimeout" if blame.hung else "WorkerDied", event=event)])
        if blame.item == SETUP_ITEM or losses >= self.settings.losses_to_disable:
            if blame.item != SETUP_ITEM:
                text = DISABLED_AFTER_LOSSES.format(losses=losses, instance=server_instance_id())
                self.reporter.log(LogEntry.for_context(ctx, "SYSTEM", "ERROR", text))
            self.reporter.disable(ctx, message)
            self._drop(config_id)
        if task.kind == "process" and blame.item >= 0:
            skip = task.payload.setdefault("skip", {})
            skip.setdefault(blame.item, set()).add(config_id)
        return task.kind != "task"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, inventory: Inventory | None = None) -> None:
        """Read the plugin configs and start the zygote (team workers start when their team first needs one).

        ``inventory`` replaces reading the database (``run_plugin`` runs a
        plugin that is not installed)."""
        _allow_open_files(FDS_PER_TEAM_WORKER * max(self.settings.team_workers_max, self.settings.concurrency) + 256)
        self.empty_dir = tempfile.mkdtemp(prefix="plugin-worker-root-")
        os.chmod(self.empty_dir, 0o555)
        self._set_inventory(inventory if inventory is not None else load_inventory(self._code_cache))
        concurrency = max(1, self.settings.concurrency)
        # TASKS_PER_WORKER tasks per lane may wait; a caller beyond waits in put() (the back-pressure).
        self._queue = queue.Queue(maxsize=concurrency * max(1, self.settings.tasks_per_worker))
        if self._client is None and not self._lazy_zygote:
            self.zygote()
        self._lanes = [Lane(self._queue, index) for index in range(concurrency)]
        for lane in self._lanes:
            lane.start()
        self.reporter.flush()

    def reload(self) -> None:
        """Re-read the plugin configs; in-flight work finishes first in each team worker."""
        inventory = load_inventory(self._code_cache)
        with self._lock:
            unchanged = {
                config_id
                for config_id, spec in inventory.specs.items()
                if config_id in self.inventory.specs and self.inventory.specs[config_id].version == spec.version
            }
            self._loaded &= unchanged
            self._losses = {cid: count for cid, count in self._losses.items() if cid in unchanged}
            self._set_inventory(inventory)
            self._methods = {cid: names for cid, names in self._methods.items() if cid in unchanged}
            live = list(self._teams.values())
        futures = []
        exporting = []
        for team in live:
            if team.team_id not in self._specs_by_team:
                self._evict(team.key)
            elif team.key != team.team_id:
                exporting.append(team)  # an export worker: configured behind its chunk in flight
            else:
                futures.append(self._submit(team.team_id, lambda worker: worker.configure()))
        for team in exporting:
            team.configure()
        self._wait(futures)

    def stop(self) -> None:
        """Tear every plugin down (at most 5 s), then stop the workers and the zygote."""
        with self._lock:
            teams = list(self._teams.values())
            self._teams.clear()
        for team in teams:
            self._start_retiring(team, "stop")
        for thread in list(self._retiring):
            thread.join(TEARDOWN_SECONDS + 1)
        for lane in self._lanes:
            lane.request_stop()
        for _lane in self._lanes:
            try:
                self._queue.put(None, timeout=TEARDOWN_SECONDS)
            except queue.Full:
                logger.warning("the plugin lanes are still busy at shutdown")
        for lane in self._lanes:
            lane.stop(TEARDOWN_SECONDS)
        self._lanes = []
        self.reporter.flush()
        self.meta_executor.shutdown(wait=False)
        if self._broker is not None:
            self._broker.close()
        if self._client is not None:
            self._client.close()
        if self._zygote is not None:
            self._zygote.close()
            self._zygote = None
        if self._owns_host:
            self.host.close()
        if self.empty_dir:
            shutil.rmtree(self.empty_dir, ignore_errors=True)

    def _wait(self, futures: Iterable[concurrent.futures.Future[Any]]) -> list[Any]:
        results = [future.result() for future in futures]
        self.reporter.flush()
        return results

    # --- team workers ---------------------------------------------------------------------

    def _pin(self, team_id: int | None, export: bool = False) -> TeamWorker:
        """The team's worker entry (made if needed), most recently used, pinned against eviction.

        ``export``: the team's export worker, a second process of the same
        team for ``on_event``/``on_snapshot``, so that a slow export never
        holds up the team's ``process_event`` work."""
        key: Any = ("export", team_id) if export else team_id
        with self._lock:
            team = self._teams.get(key)
            if team is None:
                index = self._free_indexes.pop() if self._free_indexes else self._take_index()
                team = self._teams[key] = TeamWorker(self, team_id, index)
                team.key = key
            self._teams.move_to_end(key)
            team.pins += 1
            victims = self._over_capacity()
        for victim in victims:
            self._start_retiring(victim, "evicted")
        return team

    def _take_index(self) -> int:
        self._next_index += 1
        return self._next_index - 1

    def _unpin(self, team: TeamWorker) -> None:
        with self._lock:
            team.pins -= 1
            victims = self._over_capacity()
        for victim in victims:
            self._start_retiring(victim, "evicted")

    def _over_capacity(self) -> list[TeamWorker]:
        """Idle team workers to retire, least recently used first, to get back under TEAM_WORKERS_MAX (lock held)."""
        limit = max(self.settings.team_workers_max, self.settings.concurrency, 1)
        victims: list[TeamWorker] = []
        excess = len(self._teams) - limit
        if excess <= 0:
            return victims
        for team_id, team in list(self._teams.items()):
            if excess <= 0:
                break
            if team.pins == 0:
                del self._teams[team_id]
                victims.append(team)
                excess -= 1
        return victims

    def _evict(self, key: Any) -> None:
        with self._lock:
            team = self._teams.get(key)
            if team is None or team.pins:
                return
            del self._teams[key]
        self._start_retiring(team, "evicted")

    def _start_retiring(self, team: TeamWorker, reason: str) -> None:
        """Retire a team worker in the background: its teardown must not hold up other teams."""
        thread = threading.Thread(target=self._retire, args=(team, reason), name=f"plugin-retire-{team.team_id}", daemon=True)
        self._retiring = [t for t in self._retiring if t.is_alive()] + [thread]
        thread.start()

    def _retire(self, team: TeamWorker, reason: str) -> None:
        try:
            with team.lock:
                team.retired = True
                team.retire(reason)
            self.reporter.flush()
        except Exception:  # noqa: BLE001 — a retiring worker is gone either way
            logger.exception("retiring the worker of team %s failed", team.team_id)
        finally:
            if team.worker is not None:
                team.worker.kill()
            with self._lock:
                self._free_indexes.append(team.index)

    def _submit(self, team_id: int | None, work: Callable[[TeamWorker], Any]) -> concurrent.futures.Future[Any]:
        """Run ``work(team worker)`` on one of the WORKER_CONCURRENCY lanes."""
        if not self._lanes:
            raise WorkerDied("the worker pool is not running")

        def run() -> Any:
            team = self._pin(team_id)
            try:
                return work(team)
            finally:
                self._unpin(team)

        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((run, future))
        return future

    def slots(self) -> list[Lane]:
        """The lanes: supervised services, WORKER_CONCURRENCY of them (health in /_ready, piscina gauges)."""
        return list(self._lanes)

    def _run(self, team_id: int | None, kind: str, payload: dict[str, Any]) -> concurrent.futures.Future[Any]:
        return self._submit(team_id, lambda team: team.run(kind, payload))

    def hello(self, team_id: int | None, name: str) -> Any:
        """The worker task ``hello`` on a team's worker (started if needed)."""
        return self._run(team_id, "hello", {"name": name}).result()

    def team_worker(self, team_id: int | None) -> WorkerProcess | None:
        """The worker process of a team, started if needed (for health checks and tests)."""
        self.hello(team_id, str(team_id))
        team = self._teams.get(team_id)
        return team.worker if team is not None else None

    def workers(self) -> list[WorkerProcess | None]:
        """The live team worker processes (for health checks and tests)."""
        with self._lock:
            return [team.worker for team in self._teams.values() if team.worker is not None]

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
        """Indexes of the events that need a worker, grouped by team.

        ``methods`` are the exports that make an event worth sending,
        ``snapshot_methods`` the same for ``$snapshot`` events (none: they skip).
        """
        chains = self.inventory.chains
        groups: dict[int, list[int]] = {}
        for index, event in enumerate(events):
            wanted = snapshot_methods if event.get("event") == "$snapshot" else methods
            team_id = event.get("team_id")
            chain = chains.get(team_id)  # type: ignore[arg-type]
            if chain and wanted and self._wants(chain, wanted):
                groups.setdefault(team_id, []).append(index)  # type: ignore[arg-type]
        return groups

    def _dispatch(self, kind: str, events: list[PluginEvent], groups: dict[int, list[int]]) -> dict[int, concurrent.futures.Future[Any]]:
        chains = self.inventory.chains
        futures = {}
        for team_id, indexes in groups.items():
            payload = {"chains": {team_id: chains[team_id]}, "events": [events[index] for index in indexes]}
            futures[team_id] = self._run(team_id, kind, payload)
        return futures

    def process_events(self, events: list[PluginEvent]) -> list[PluginEvent]:
        """Run every team's ``process_event`` chain; returns the surviving events in input order.

        ``$snapshot`` events are not sent to plugins here: only ``on_snapshot``
        sees them. Raises :class:`PluginsNotRun` (carrying every other
        event's result) when some team's plugins could not run.
        """
        # $snapshot events skip process_event, as in the original.
        groups = self._route(events, ("process_event", "process_event_batch"), ())
        if not groups:
            return events
        results: list[PluginEvent | None] = list(events)
        failed: list[tuple[PluginEvent, str]] = []
        for team_id, future in self._dispatch("process", events, groups).items():
            indexes = groups[team_id]
            try:
                value = future.result()
            except (PluginError, WorkerDied) as error:
                reason = f"the plugins of team {team_id} could not run: {error}"
                logger.error("%s (%d events dead-lettered)", reason, len(indexes), extra={"team_id": team_id})
                failed.extend((events[index], reason) for index in indexes)
                for index in indexes:
                    results[index] = None
                continue
            if not isinstance(value, list) or len(value) != len(indexes):
                reason = f"the worker of team {team_id} answered {len(indexes)} events with {type(value).__name__}"
                failed.extend((events[index], reason) for index in indexes)
                for index in indexes:
                    results[index] = None
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
        survivors = [event for event in results if event is not None]
        if failed:
            raise PluginsNotRun(survivors, failed)
        return survivors

    def process_event_batch(self, events: list[PluginEvent]) -> list[PluginEvent]:
        """Each plugin's ``process_event_batch`` on each team's events."""
        groups = self._route(events, ("process_event_batch", "process_event"), ())
        routed = {index for group in groups.values() for index in group}
        passed = [event for index, event in enumerate(events) if index not in routed]
        kept: list[PluginEvent] = []
        failed: list[tuple[PluginEvent, str]] = []
        for team_id, future in self._dispatch("process_batch", events, groups).items():
            try:
                value = future.result()
            except (PluginError, WorkerDied) as error:
                failed.extend((events[index], f"the plugins of team {team_id} could not run: {error}") for index in groups[team_id])
                continue
            kept.extend(event for event in value if isinstance(event, dict) and event.get("team_id") == team_id)
        self.reporter.flush()
        if failed:
            raise PluginsNotRun(passed + kept, failed)
        return passed + kept

    def on_events(self, events: list[PluginEvent]) -> None:
        """``on_event`` / ``on_snapshot`` for stored events; waits until they ran."""
        groups = self._route(events, ("on_event",), ("on_snapshot",))
        for future in self._dispatch("on_events", events, groups).values():
            try:
                future.result()
            except (PluginError, WorkerDied):
                logger.exception("on_event could not run on some events")
        self.reporter.flush()

    # --- the export lane's side (plugin_server/export_lane.py) -----------------------------

    def exporters(self, team_id: Any, snapshot: bool) -> tuple[int, ...]:
        """The team's configs that export ``on_event`` (``on_snapshot`` when ``snapshot``)."""
        return exports.exporters(self, team_id, snapshot)

    def export(self, config_id: int, events: list[PluginEvent], concurrency: int) -> dict[str, int]:
        """One config's ``on_event``/``on_snapshot`` on stored events, up to ``concurrency`` calls at once; waits.

        Runs on the caller's thread (an export thread of the lane), not on a
        lane of the pool: exports never queue ahead of process_event work.
        Returns ``{"calls": n, "timeouts": n}``. Raises WorkerDied when the
        worker was lost twice."""
        spec = self.inventory.specs.get(config_id)
        if spec is None or config_id not in (self.inventory.chains.get(spec.team_id) or ()):  # type: ignore[arg-type]
            return exports.export_stats(None)
        # A second process only when the team's chain has process_event work it could hold up.
        chain = self.inventory.chains.get(spec.team_id) or ()  # type: ignore[arg-type]
        team = self._pin(spec.team_id, export=self._wants(chain, ("process_event", "process_event_batch")))
        try:
            return exports.export_stats(team.run("on_events", exports.export_payload(spec.team_id, config_id, events, concurrency)))
        finally:
            self._unpin(team)
            self.reporter.flush()

    def disable_config(self, config_id: int, reason: str) -> None:
        exports.disable_config(self, config_id, reason)

    def _task(self, config_id: int, kind: str, name: str, payload: Any) -> Any:
        spec = self.inventory.specs.get(config_id)
        if spec is None:
            raise PluginError(f"Plugin config {config_id} is not in force")
        limit = self.settings.task_timeout * TASK_TIMEOUT_FACTOR
        task = {"cfg": config_id, "kind": kind, "name": name, "payload": payload, "limit": limit}
        try:
            return self._run(spec.team_id, "task", task).result()
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
        """``{"runEveryMinute": [config ids], "runEveryHour": [...], "runEveryDay": [...]}``.

        Asked of the workers of the teams whose plugins name a scheduled task
        in their source (no other can export one), so a schedule does not
        start a worker for every team.
        """
        teams = {
            team_id
            for team_id, specs in self._specs_by_team.items()
            if any(spec.code is not None and any(name in spec.code.source for name in _SCHEDULE_NAMES) for spec in specs.values())
        }
        futures = [self._run(team_id, "schedule", {}) for team_id in teams]
        schedule: dict[str, list[int]] = {key: [] for key in SCHEDULE_KEYS.values()}
        for future, team_id in zip(futures, teams):
            try:
                result = future.result()
            except (PluginError, WorkerDied):
                logger.exception("could not read the schedule of team %s", team_id)
                continue
            for key in schedule:
                team_specs = self._specs_by_team.get(team_id, {})
                schedule[key].extend(int(cid) for cid in result.get(key, []) if isinstance(cid, int) and cid in team_specs)
        self.reporter.flush()
        return {key: sorted(ids) for key, ids in schedule.items()}
