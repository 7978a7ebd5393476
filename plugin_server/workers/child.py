"""The team worker process: task loop and the child side of ``meta``.

Forked by the plugin zygote (:mod:`plugin_server.workers.zygote`) for one
team, it finishes locking itself down
(:mod:`plugin_server.workers.hardening`), says hello, then serves tasks one
at a time: configure, process, process_batch, on_events, task, schedule,
teardown, stop. It only ever receives the plugin configs and events of its
team, never imports Django and never sees a credential.

Every value plugin code hands over (a return value, meta call arguments, a
log line, an exception) is copied into plain data inside the plugin's time
limit (:mod:`plugin_server.plugins.plain`) before this module's code uses
it, so no plugin-defined method ever runs outside the limit.

Everything a plugin does outside pure computation is a request to the main
process: the ``meta.cache/storage/fetch/geoip/jobs`` proxies send ``meta``
frames and wait for the answer; ``print``, ``meta.logger`` and
``posthog.capture`` are fire-and-forget and travel with the task's result,
so a chatty plugin costs no round trip per line. Both buffers are bounded.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, cast

from plugin_server.exceptions import PluginError, PluginTimeout, RetryError, WorkerDied
from plugin_server.plugins import call_timing
from plugin_server.plugins.lifecycle import PLAIN, RAW, SCHEDULE_KEYS, ConfigSpec, Instances
from plugin_server.plugins.js.engine import JsExports, JsPlugin
from plugin_server.plugins.meta.console import format_log_message
from plugin_server.plugins.plain import PlainDataError, PluginFailure, plain_failure, to_plain, to_plain_or_none
from plugin_server.plugins.meta.wire import FetchResponse
from plugin_server.plugins.runner import (
    TaskNotFound,
    run_on_event,
    run_process_event,
    run_process_event_batch,
    run_task,
)
from plugin_server.plugins.time_limit import (
    call_with_time_limit,
    disarm_alarm,
    keep_alarm_handler,
    register_waiting_code,
    timeout_deferred,
)
from plugin_server.plugins.tracebacks import code_traceback
from plugin_server.workers import protocol
from plugin_server.workers.concurrent_calls import ConcurrentCalls
from plugin_server.workers.hardening import HardeningReport, harden_worker

# Per task: more log lines or errors than this are counted, not kept.
MAX_LOG_LINES = 10_000
MAX_ERRORS = 1_000
MAX_STACK_CHARS = 4_000
EXPORT_METHODS = ("on_event", "on_snapshot")
LOG_TYPES = {"debug": "DEBUG", "log": "LOG", "info": "INFO", "warn": "WARN", "warning": "WARN", "error": "ERROR"}


class ApiProxy:
    """``meta.cache`` / ``meta.storage`` / ``meta.geoip``: each method a request to the main process."""

    def __init__(self, call: Callable[[str, tuple[Any, ...], dict[str, Any]], Any], methods: frozenset[str]) -> None:
        self._call = call
        self._methods = methods

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_") or name not in self._methods:
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, args, kwargs)


class JobRunner:
    """``meta.jobs.<name>(payload)``: choose when it runs (served by meta/jobs.py)."""

    def __init__(self, call: Callable[[str, tuple[Any, ...], dict[str, Any]], Any], name: str, payload: Any) -> None:
        self._call = call
        self._name = name
        self._payload = payload

    def run_now(self) -> Any:
        return self._call("run_now", (self._name, self._payload), {})

    def run_in(self, duration: float | None = None, unit: str | None = None, **keywords: float) -> Any:
        if duration is not None:
            # The main process reads unit as a text beside the float keywords.
            cast(dict[str, Any], keywords).update(duration=duration, unit=unit)
        return self._call("run_in", (self._name, self._payload), keywords)

    def run_at(self, when: Any) -> Any:
        # A datetime becomes its ISO text in the plain copy of the arguments.
        return self._call("run_at", (self._name, self._payload, when), {})

    runNow = run_now  # noqa: N815  (the original's names)
    runIn = run_in  # noqa: N815
    runAt = run_at  # noqa: N815


class JobsProxy:
    """``meta.jobs``: any attribute is a job name (checked when the job runs)."""

    def __init__(self, call: Callable[[str, tuple[Any, ...], dict[str, Any]], Any]) -> None:
        self._call = call

    def __getattr__(self, name: str) -> Callable[..., JobRunner]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda payload=None: JobRunner(self._call, name, payload)


class Logger:
    """``meta.logger`` (and ``print``): lines buffered into the task's result."""

    def __init__(self, emit: Callable[[str, tuple[Any, ...]], None]) -> None:
        self._emit = emit

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name not in LOG_TYPES:
            raise AttributeError(name)
        kind = LOG_TYPES[name]
        return lambda *args: self._emit(kind, args)


class Capture:
    """The ``posthog`` global: ``posthog.capture(event, properties)``, fire-and-forget."""

    def __init__(self, defer: Callable[[str, tuple[Any, ...], dict[str, Any]], None]) -> None:
        self._defer = defer

    def capture(self, event: str, properties: dict[str, Any] | None = None) -> None:
        self._defer("capture", (event, properties or {}), {})


class PluginMeta:
    """The ``meta`` argument of every plugin function (docs/plugins.md)."""

    def __init__(self, **parts: Any) -> None:
        self.config = parts["config"]
        self.attachments = parts["attachments"]
        self.global_ = parts["global_"]
        self.cache = parts["cache"]
        self.storage = parts["storage"]
        self.geoip = parts["geoip"]
        self.jobs = parts["jobs"]
        self.logger = parts["logger"]
        self.fetch = parts["fetch"]


class WorkerRuntime:
    """The worker's side of everything: meta requests, limits, result buffers."""

    def __init__(self, read_fd: int, write_fd: int, marker: protocol.ProgressMarker, sandbox: Any) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.marker = marker
        self.sandbox = sandbox
        self.task_timeout = 30.0
        self.allowed_calls: dict[str, frozenset[str]] = {}
        # JavaScript plugins: isolate heap (MiB) and meta calls per call.
        self.js_limits = (128, 1000)
        self.instances = Instances(self)
        self.calls = ConcurrentCalls(read_fd, marker)
        self._next_id = 0
        self.reset()

    def reset(self) -> None:
        self.logs: list[list[Any]] = []
        self.errors: list[list[Any]] = []
        self.system_events: list[dict[str, Any]] = []
        self.deferred: list[list[Any]] = []
        self.timings: dict[tuple[int, str], list[Any]] = {}
        self.dropped = 0
        self.exit_after = False

    # --- Runtime protocol (plugin_server.plugins.lifecycle) ----------------------

    def make_meta(self, spec: ConfigSpec) -> PluginMeta:
        def api(name: str) -> ApiProxy:
            return ApiProxy(lambda method, args, kwargs: self.request(spec, name, method, args, kwargs),
                            self.allowed_calls.get(name, frozenset()))

        return PluginMeta(
            config=dict(spec.config),
            attachments={key: dict(value) for key, value in spec.attachments.items()},
            global_={},
            cache=api("cache"),
            storage=api("storage"),
            geoip=api("geoip"),
            jobs=JobsProxy(lambda method, args, kwargs: self.request(spec, "jobs", method, args, kwargs)),
            logger=Logger(lambda kind, args: self.log(spec, kind, args)),
            fetch=lambda *args, **kwargs: FetchResponse.from_wire(self.request(spec, "fetch", "fetch", args, kwargs)),
        )

    def make_globals(self, spec: ConfigSpec) -> dict[str, object]:
        def plugin_print(*args: Any, **_ignored: Any) -> None:
            self.log(spec, "LOG", args)

        capture = Capture(lambda method, args, kwargs: self.defer(spec, "posthog", method, args, kwargs))
        # RetryError: a job asks the job queue for another attempt (docs/jobs.md).
        return {"print": plugin_print, "posthog": capture, "RetryError": RetryError}

    def compile(self, spec: ConfigSpec, injected: dict[str, object]) -> Any:
        if getattr(spec.code, "language", "python") == "javascript":
            # A V8 isolate of its own (plugin_server/plugins/js/engine.py).
            return JsExports(JsPlugin(self, spec, *self.js_limits))
        return self.sandbox.compile_plugin(spec.code, injected)

    def call(
        self,
        spec: ConfigSpec,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        limit: float,
        item: int,
        what: str = "",
        keep: str = PLAIN,
    ) -> Any:
        """One plugin call under its time limit; ``what`` names it for the timings.

        Inside the limit, the result is copied into plain data (``keep``
        PLAIN; DISCARD drops it, RAW only for compiling, whose result is the
        sandbox's own) and an exception into a :class:`PluginFailure`: nothing
        of the plugin's leaves this call.
        """

        def bounded() -> Any:
            try:
                result = fn(*args)
                return to_plain(result) if keep == PLAIN else result if keep == RAW else None
            except (MemoryError, PluginFailure):
                # A PluginFailure is plain already (a JavaScript plugin's error, copied by its engine).
                raise
            except Exception as error:  # noqa: BLE001 — whatever it is, it leaves as plain text
                raise plain_failure(error, lambda: code_traceback(error, spec.code)[-MAX_STACK_CHARS:]) from None

        started = time.monotonic()
        self.marker.set(started + limit, spec.plugin_config_id, item)
        failed = True
        try:
            result = call_with_time_limit(bounded, seconds=limit)
            failed = False
            return result
        except MemoryError:
            # The plugin's garbage is gone once this unwinds, but the heap may
            # be fragmented: finish the task, then hand over to a fresh worker.
            self.exit_after = True
            raise PluginError("Plugin exceeded the worker memory limit; its worker was replaced") from None
        finally:
            ended = time.monotonic()
            # The config stays named: a worker lost before the next call is blamed on the last one that ran.
            self.marker.set(ended + self.task_timeout, spec.plugin_config_id, item)
            if what:
                # Summed per (config, call) and sent with the result: no metric per call on the wire.
                timing = self._timing(spec, what)
                timing[0] += 1
                timing[1] += (ended - started) * 1000
                timing[2] += failed
                timing[4][call_timing.bucket((ended - started) * 1000)] += 1

    def _timing(self, spec: ConfigSpec, what: str) -> list[Any]:
        """[calls, total ms, errors, dropped events, time buckets] of one (config, call) in this task."""
        return self.timings.setdefault((spec.plugin_config_id, what), [0, 0.0, 0, 0, call_timing.empty()])

    def drop_events(self, spec: ConfigSpec, what: str, count: int = 1) -> None:
        """``count`` events dropped by this config's ``what`` (plugin health)."""
        self._timing(spec, what)[3] += count

    def error(self, spec: ConfigSpec, error: BaseException | str, event: dict[str, Any] | None) -> None:
        if len(self.errors) >= MAX_ERRORS:
            self.dropped += 1
            return
        if isinstance(error, PluginFailure):
            # Made plain inside the plugin's time limit (the plugin's own exception is gone).
            self.errors.append([spec.plugin_config_id, error.name, error.message, error.stack, to_plain_or_none(event)])
        elif isinstance(error, BaseException):
            # The sandbox's own errors (time out, memory): trusted objects.
            stack = code_traceback(error, spec.code)[-MAX_STACK_CHARS:]
            self.errors.append([spec.plugin_config_id, type(error).__name__, str(error), stack, to_plain_or_none(event)])
        else:
            self.errors.append([spec.plugin_config_id, None, error, None, to_plain_or_none(event)])

    def system(self, spec: ConfigSpec, what: str, **details: Any) -> None:
        self.system_events.append({"cfg": spec.plugin_config_id, "what": what, **details})

    # --- meta, logs ---------------------------------------------------------------

    def log(self, spec: ConfigSpec, kind: str, args: tuple[Any, ...]) -> None:
        if len(self.logs) >= MAX_LOG_LINES:
            self.dropped += 1
            return
        now = datetime.now(timezone.utc).isoformat()
        self.logs.append([spec.plugin_config_id, kind, format_log_message(args), now])

    def defer(self, spec: ConfigSpec, api: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if len(self.deferred) >= MAX_LOG_LINES:
            self.dropped += 1
            return
        arguments = to_plain([list(args), kwargs])
        self.deferred.append([spec.plugin_config_id, api, method, arguments[0], arguments[1]])

    def request(self, spec: ConfigSpec, api: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """One meta call to the main process; waits for its answer."""
        self._next_id += 1
        request_id = self._next_id
        try:
            arguments = to_plain([list(args), kwargs])
        except PlainDataError as error:
            refusal = f"meta.{api}.{method}(): arguments must be JSON values ({error})"
            if api == "jobs":
                # A refused job payload is in the plugin's log even when the plugin catches the error.
                self.log(spec, "ERROR", (refusal,))
            raise PluginError(refusal) from None
        message = {"t": "meta", "id": request_id, "cfg": spec.plugin_config_id, "api": api, "method": method,
                   "args": arguments[0], "kwargs": arguments[1]}
        # A deadline passing meanwhile is raised after the answer: a frame is never cut in half.
        with timeout_deferred():
            protocol.send_to_main(self.write_fd, message)
            reply = self.calls.wait_reply(request_id)
        if "error" in reply:
            raise PluginError(reply["error"])
        return reply["value"]

    # --- tasks ---------------------------------------------------------------------

    def handle(self, kind: str, payload: dict[str, Any]) -> Any:
        instances = self.instances
        if kind == "init":
            self.task_timeout = float(payload["task_timeout"])
            self.allowed_calls = {api: frozenset(methods) for api, methods in payload["allowed_calls"].items()}
            self.js_limits = (int(payload.get("js_memory_mb", 128)), int(payload.get("js_meta_calls_max", 1000)))
            return True
        if kind == "configure":
            instances.configure(payload["specs"])
            return True
        if kind == "process":
            chains = payload["chains"]
            skip = payload.get("skip", {})
            events = payload["events"]
            return [
                run_process_event(self, instances, chains.get(event.get("team_id"), ()), event, index,
                                  frozenset(skip.get(index, ())))
                for index, event in enumerate(events)
            ]
        if kind == "process_batch":
            by_team: dict[Any, list[dict[str, Any]]] = {}
            for event in payload["events"]:
                by_team.setdefault(event.get("team_id"), []).append(event)
            return [kept for team, events in by_team.items()
                    for kept in run_process_event_batch(self, instances, payload["chains"].get(team, ()), events)]
        if kind == "on_events":
            return self.on_events(payload["chains"], payload["events"], int(payload.get("concurrency", 1)))
        if kind == "task":
            instance = instances.get(payload["cfg"])
            if instance is None:
                raise TaskNotFound(f"Plugin config {payload['cfg']} is not loaded in this worker")
            return run_task(self, instance, payload["kind"], payload["name"], payload.get("payload"), payload["limit"])
        if kind == "schedule":
            schedule: dict[str, list[int]] = {key: [] for key in SCHEDULE_KEYS.values()}
            for instance in instances.all():
                instance = instances.get(instance.spec.plugin_config_id) or instance
                for name in instance.tasks()["schedule"]:
                    schedule[SCHEDULE_KEYS[name]].append(instance.spec.plugin_config_id)
            return schedule
        if kind == "teardown":
            instances.teardown(payload.get("cfgs"))
            return True
        if kind == "hello":
            return f"hello {payload.get('name', '')}!"
        raise ValueError(f'Worker task "{kind}" not found')

    def on_events(self, chains: dict[Any, Any], events: list[dict[str, Any]], concurrency: int) -> dict[str, int]:
        """``on_event``/``on_snapshot`` of each event, up to ``concurrency`` calls at once; calls and timeouts."""
        errors_before = len(self.errors)
        wanted = {config_id for chain in chains.values() for config_id in chain}
        if any(instance.spec.plugin_config_id in wanted and instance.spec.code is not None
               and instance.spec.code.language != "python" for instance in self.instances.all()):
            # A JavaScript plugin's calls share one isolate and its bridge: one at a time.
            concurrency = 1
        self.calls.run(
            [functools.partial(run_on_event, self, self.instances, chains.get(event.get("team_id"), ()), event, index)
             for index, event in enumerate(events)],
            concurrency,
        )
        calls = sum(numbers[0] for (_config, what), numbers in self.timings.items() if what in EXPORT_METHODS)
        timeouts = sum(1 for entry in self.errors[errors_before:] if entry[1] == PluginTimeout.__name__)
        return {"calls": calls, "timeouts": timeouts}

    def serve(self) -> None:
        while True:
            kind, payload = protocol.receive_from_main(self.read_fd)
            if kind == "stop":
                self.reset()
                self.instances.teardown()
                self._send_result(True)
                return
            self.reset()
            # Until a plugin call starts, a loss is the last config's that ran (its marker entry stays).
            _deadline, last_config, _item = self.marker.read()
            self.marker.set(time.monotonic() + self.task_timeout, last_config, -1)
            failure: str | None
            try:
                value = self.handle(kind, payload)
            except MemoryError:
                # The heap may be in any state now: answer, then let a fresh worker take over.
                self.exit_after = True
                value, failure = None, "MemoryError: the worker ran out of memory"
            except (PluginError, LookupError, ValueError, TypeError, KeyError) as error:
                value, failure = None, f"{type(error).__name__}: {error}"
            else:
                failure = None
            disarm_alarm()
            _deadline, last_config, _item = self.marker.read()
            self.marker.set(0.0, last_config, -1)
            self._send_result(value, failure)
            if self.exit_after:
                return

    def _send_result(self, value: Any, failure: str | None = None) -> None:
        message: dict[str, Any] = {
            "t": "result",
            "value": value,
            "errors": self.errors,
            "logs": self.logs,
            "system": self.system_events,
            "deferred": self.deferred,
            "timings": [[config_id, what, *numbers] for (config_id, what), numbers in self.timings.items()],
            "dropped": self.dropped,
            "exit": self.exit_after,
        }
        if failure is not None:
            message["failure"] = failure
        protocol.send_to_main(self.write_fd, message)


register_waiting_code(WorkerRuntime.request.__code__)


def serve_team(fds: list[int], memory_mb: int, uid: int, inherited: HardeningReport, sandbox: Any) -> None:
    """The team worker's life, in the child the zygote just forked: harden, hello, serve, exit.

    ``fds`` are the worker's pipe from and to the main process and its
    progress marker, made by the main process and passed through the zygote.
    """
    read_fd, write_fd, marker_fd = fds
    marker = protocol.ProgressMarker(marker_fd)
    os.close(marker_fd)  # the map holds a duplicate of its own
    report = harden_worker(memory_mb, uid, HardeningReport(list(inherited.applied), dict(inherited.skipped)))
    protocol.send_to_main(write_fd, {"t": "hello", "pid": os.getpid(), "applied": report.applied,
                                     "skipped": report.skipped})
    runtime = WorkerRuntime(read_fd, write_fd, marker, sandbox)
    keep_alarm_handler()
    try:
        runtime.serve()
    except WorkerDied:
        # The main process went away: nothing left to serve.
        pass
    sys.stdout.flush()
