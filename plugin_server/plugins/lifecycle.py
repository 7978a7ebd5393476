"""Plugin instances inside a worker: lazy set-up, reuse, teardown.

A worker holds one :class:`PluginInstance` per plugin
config it was told about. An instance is compiled and set up lazily, the
first time the worker needs it (an event of its team, a task, a schedule
request), so a worker never pays for the plugins of teams it never sees.
Set-up is time-limited; when compiling or ``setup_plugin`` fails the
instance is "failed" (no methods, no tasks) and the main process disables
the config. On reconfiguration an instance whose config and
plugin are unchanged (same ``version``) is kept with its ``meta.global_``;
a changed or removed one is torn down.

Runs in the worker: imports nothing from Django.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from plugin_server.plugins.js.engine import JsExports
from plugin_server.plugins.plain import error_name

logger = logging.getLogger(__name__)

# Exports the runner looks up; tasks are the scheduled names and ``jobs``.
SCHEDULED_TASKS = ("run_every_minute", "run_every_hour", "run_every_day")
# The original's task names, as the scheduler and the worker task table call them.
SCHEDULE_KEYS = {"run_every_minute": "runEveryMinute", "run_every_hour": "runEveryHour", "run_every_day": "runEveryDay"}
# Item index of a marker while an instance is being set up (blame = disable).
SETUP_ITEM = -2
# What Runtime.call keeps of a call's result: a plain-data copy (the default), nothing, or the object itself
# (only for the sandbox's own compile step, whose result is trusted).
PLAIN, DISCARD, RAW = "plain", "discard", "raw"


@dataclass(frozen=True, slots=True)
class ConfigSpec:
    """Everything a worker needs to run one plugin config, built by the main process.

    ``code`` is the loader's ``PluginCode`` (``None`` when loading failed:
    the config then has no methods). ``version`` changes whenever the config
    row or its plugin row changes, and decides reuse on reload.
    """

    plugin_config_id: int
    plugin_id: int
    team_id: int | None
    plugin_name: str
    order: int
    version: str
    code: Any
    config: dict[str, Any] = field(default_factory=dict)
    attachments: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How the markers name it: ``<plugin name> (<config id>)``."""
        return f"{self.plugin_name} ({self.plugin_config_id})"


class InstanceState(enum.Enum):
    NEW = "new"
    READY = "ready"
    FAILED = "failed"


class Runtime(Protocol):
    """What an instance needs from the worker it lives in (see workers/child.py)."""

    task_timeout: float

    def make_meta(self, spec: ConfigSpec) -> Any: ...
    def make_globals(self, spec: ConfigSpec) -> dict[str, object]: ...
    def compile(self, spec: ConfigSpec, injected: dict[str, object]) -> Any: ...
    def call(
        self, spec: ConfigSpec, fn: Callable[..., Any], args: tuple[Any, ...], limit: float, item: int, what: str = "", keep: str = PLAIN
    ) -> Any: ...
    def error(self, spec: ConfigSpec, error: BaseException | str, event: dict[str, Any] | None) -> None: ...
    def system(self, spec: ConfigSpec, what: str, **details: Any) -> None: ...
    def drop_events(self, spec: ConfigSpec, what: str, count: int = 1) -> None: ...


class PluginInstance:
    """One plugin config, set up (or failed) in this worker."""

    def __init__(self, spec: ConfigSpec, runtime: Runtime) -> None:
        self.spec = spec
        self.state = InstanceState.NEW
        self.exports: Any = None
        self.meta: Any = None
        self._runtime = runtime

    def method(self, name: str) -> Callable[..., Any] | None:
        """An exported method, or None (also for a failed instance)."""
        if self.state is not InstanceState.READY:
            return None
        return getattr(self.exports, name, None)

    def process_event_fn(self) -> Callable[..., Any] | None:
        """``process_event``, or the one derived from ``process_event_batch``."""
        direct = self.method("process_event")
        if direct is not None:
            return direct
        batch = self.method("process_event_batch")
        if batch is None:
            return None

        def derived(event: dict[str, Any], meta: Any) -> Any:
            result = batch([event], meta)
            return result[0] if result else None

        return derived

    def process_event_batch_fn(self) -> Callable[..., Any] | None:
        """``process_event_batch``, or the one derived from ``process_event``: each event, falsy results dropped."""
        direct = self.method("process_event_batch")
        if direct is not None:
            return direct
        process = self.method("process_event")
        if process is None:
            return None

        def derived(events: list[dict[str, Any]], meta: Any) -> list[Any]:
            return [result for result in (process(event, meta) for event in events) if result]

        return derived

    def job(self, name: str) -> Callable[..., Any] | None:
        """The handler of job ``name`` from the exported ``jobs`` dict, or None."""
        jobs = self.method("jobs")
        function = jobs.get(name) if isinstance(jobs, dict) else None
        return function if callable(function) else None

    def tasks(self) -> dict[str, list[str]]:
        """The task table: ``schedule`` (exported scheduled names) and ``job`` names."""
        schedule = [name for name in SCHEDULED_TASKS if callable(self.method(name))]
        jobs = self.method("jobs")
        return {"schedule": schedule, "job": sorted(jobs) if isinstance(jobs, dict) else []}

    def setup(self, item: int) -> None:
        """Compile and run ``setup_plugin``; a failure leaves the instance FAILED."""
        runtime = self._runtime
        spec = self.spec
        if spec.code is None:
            # Loading already failed in the main process and was recorded there.
            self.state = InstanceState.FAILED
            return
        try:
            self.meta = runtime.make_meta(spec)
            self.exports = runtime.call(
                spec,
                runtime.compile,
                (spec, runtime.make_globals(spec)),
                runtime.task_timeout,
                SETUP_ITEM,
                keep=RAW,
            )
            setup = getattr(self.exports, "setup_plugin", None)
            if setup is not None:
                runtime.call(spec, setup, (self.meta,), runtime.task_timeout, SETUP_ITEM, keep=DISCARD)
        except Exception as error:
            self.state = InstanceState.FAILED
            self._dispose()
            runtime.error(spec, error, None)
            runtime.system(spec, "setup_failed", name=error_name(error), message=str(error))
            return
        self.state = InstanceState.READY
        methods = [
            name
            for name in ("setup_plugin", "teardown_plugin", "process_event", "process_event_batch", "on_event", "on_snapshot")
            if getattr(self.exports, name, None) is not None
        ]
        runtime.system(spec, "loaded", methods=methods, tasks=self.tasks())

    def teardown(self) -> None:
        """Call ``teardown_plugin`` if set up; errors are recorded, not raised."""
        if self.state is not InstanceState.READY:
            return
        self.state = InstanceState.FAILED
        try:
            self._teardown()
        finally:
            self._dispose()

    def _dispose(self) -> None:
        """A JavaScript plugin's isolate goes with its instance (a Python plugin has nothing to dispose of)."""
        if isinstance(self.exports, JsExports):
            self.exports.dispose()

    def _teardown(self) -> None:
        teardown = getattr(self.exports, "teardown_plugin", None)
        if teardown is not None:
            try:
                self._runtime.call(self.spec, teardown, (self.meta,), self._runtime.task_timeout, -1, keep=DISCARD)
            except Exception as error:
                self._runtime.error(self.spec, error, None)
                self._runtime.system(self.spec, "unload_failed")
                return
        self._runtime.system(self.spec, "unloaded")


class Instances:
    """The worker's plugin configs and team chains, with lazy set-up."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._instances: dict[int, PluginInstance] = {}

    def configure(self, specs: dict[int, ConfigSpec]) -> None:
        """Adopt a new set of configs: keep unchanged instances, tear down the rest."""
        old = self._instances
        self._instances = {}
        for config_id, spec in specs.items():
            instance = old.pop(config_id, None)
            if instance is not None and instance.spec.version == spec.version:
                self._instances[config_id] = instance
            else:
                if instance is not None:
                    instance.teardown()
                self._instances[config_id] = PluginInstance(spec, self._runtime)
        for instance in old.values():
            instance.teardown()

    def get(self, config_id: int, item: int = -1) -> PluginInstance | None:
        """The instance of a config, set up now if this is its first use."""
        instance = self._instances.get(config_id)
        if instance is None:
            return None
        if instance.state is InstanceState.NEW:
            instance.setup(item)
        return instance

    def all(self) -> list[PluginInstance]:
        return list(self._instances.values())

    def teardown(self, config_ids: list[int] | None = None) -> None:
        """Tear down the given configs (all when None); they are set up again on next use."""
        for config_id, instance in list(self._instances.items()):
            if config_ids is None or config_id in config_ids:
                instance.teardown()
                self._instances[config_id] = PluginInstance(instance.spec, self._runtime)
