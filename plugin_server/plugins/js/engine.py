"""JavaScript plugins in the team worker: one V8 isolate per plugin config.

The main process transpiled the plugin when it loaded it
(:mod:`plugin_server.plugins.js.transpile`); here, the first time the worker
needs the config (lazy set-up, :mod:`plugin_server.plugins.lifecycle`), a
fresh isolate (``py_mini_racer``: V8 with its memory sandbox, jit-less, so
no WebAssembly and no writable code) gets the prelude (``prelude.js``: the
original's globals and the bridge) and the plugin's script, and the exports
are found as the original found them. A reload or a teardown disposes of it.

Calls are driven from here, synchronously: a hook is started, then the
isolate's outbox is read as JSON — meta requests (answered through the same
:meth:`WorkerRuntime.request` as Python plugins, so the same meta host, its
allow-list and its checks), console lines and ``posthog.capture`` — and the
answers are handed back, until the hook's promise settles or the call's time
runs out. Every piece of JavaScript runs with V8's own timeout set to what is
left of the call; loops check the same deadline (guards inserted at transpile
time, which also cover code after an ``await``), and the worker watchdog is
behind both. Nothing but JSON text leaves the isolate.

Runs in the worker: imports nothing from Django.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plugin_server.exceptions import PluginError, RetryError
from plugin_server.plugins.plain import PluginFailure, RetryFailure

if TYPE_CHECKING:
    from plugin_server.plugins.lifecycle import ConfigSpec

# Read when the zygote imports this module: after its chroot nothing can be read.
PRELUDE = (Path(__file__).resolve().parent / "prelude.js").read_text(encoding="utf-8")
# Single-threaded platform (no thread before the first isolate, so the zygote forks cleanly)
# and no JIT (no executable memory to write; WebAssembly cannot even be compiled).
V8_FLAGS = ("--single-threaded", "--jitless")
# Exports the runner looks up, by the original's camelCase names.
HOOKS = {
    "setupPlugin": "setup_plugin",
    "teardownPlugin": "teardown_plugin",
    "processEvent": "process_event",
    "processEventBatch": "process_event_batch",
    "onEvent": "on_event",
    "onSnapshot": "on_snapshot",
    "runEveryMinute": "run_every_minute",
    "runEveryHour": "run_every_hour",
    "runEveryDay": "run_every_day",
}
# What the isolate may hand back from one poll (bytes of JSON text).
MAX_POLL_BYTES = 64 * 1024 * 1024
# Left of the worker's own alarm when the engine gives up on a call (seconds).
ALARM_MARGIN = 0.05
# The loop guards' deadline comes this much earlier than V8's own timeout, so that a
# loop is stopped by its guard (with its line) rather than by the isolate's termination.
GUARD_LEAD = 0.15


def init_engine() -> None:
    """Load V8 (its library and ICU data) now, in the zygote, with the flags above; starts no thread."""
    import py_mini_racer._context  # noqa: F401 — imported on first isolate otherwise
    import py_mini_racer._objects  # noqa: F401
    import py_mini_racer._set_timeout  # noqa: F401
    import py_mini_racer._value_handle  # noqa: F401
    from py_mini_racer import init_mini_racer

    init_mini_racer(flags=V8_FLAGS, ignore_duplicate_init=True)


def _plural(seconds: float) -> str:
    number = int(seconds) if float(seconds).is_integer() else seconds
    return f"{number} second{'' if number == 1 else 's'}"


class JsPlugin:
    """One plugin config's isolate and its exports, callable like a Python plugin's functions."""

    def __init__(self, runtime: Any, spec: ConfigSpec, memory_mb: int, meta_calls_max: int) -> None:
        from py_mini_racer import MiniRacer

        self._runtime = runtime
        self._spec = spec
        self._memory_mb = memory_mb
        code = spec.code
        self._host = f"__host_{code.js_token}"
        self._calls = 0
        self._context: Any = MiniRacer()
        self._context.set_hard_memory_limit(memory_mb * 1024 * 1024)
        self._eval(PRELUDE.replace("__TOKEN__", code.js_token), runtime.task_timeout)
        attachments = {
            key: {"content_type": value.get("content_type"), "file_name": value.get("file_name"),
                  "contents": base64.b64encode(bytes(value.get("contents") or b"")).decode()}
            for key, value in spec.attachments.items()
        }
        self._call_js("configure", {"limitSeconds": runtime.task_timeout, "metaCallsMax": meta_calls_max,
                                    "config": spec.config, "attachments": attachments}, limit=runtime.task_timeout)
        lookups = ", ".join(f"{name}: typeof {name} !== 'undefined' ? {name} : undefined" for name in [*HOOKS, "jobs"])
        # All on the script's first line, so that the plugin's lines keep their numbers.
        script = (
            f"{self._host}.exports((function (module) {{ return (function (module, exports) {{{code.script}\n"
            f";return [exports, module.exports, {{{lookups}}}];\n}})(module, module.exports); }})({{exports: {{}}}}));\n"
            f"//# sourceURL={code.main_filename}\n"
        )
        self.exports: list[str] = json.loads(self._eval(script, runtime.task_timeout))

    # --- plumbing -------------------------------------------------------------------------

    def _failure(self, error: Exception) -> Exception:
        from py_mini_racer import JSOOMException, JSTimeoutException

        if isinstance(error, JSTimeoutException):
            return PluginError(f"Script execution timed out after {_plural(self._runtime.task_timeout)}")
        if isinstance(error, JSOOMException):
            # The isolate is spent: finish the task and let a fresh worker take over.
            self._runtime.exit_after = True
            return PluginError(f"Plugin exceeded its memory limit of {self._memory_mb} MiB; its worker was replaced")
        text = str(error)
        # mini-racer's text: "<where>: <Name>: <message>\n<source line>\n<caret>\n\n<stack>"
        stack = text.split("\n\n", 1)[1] if "\n\n" in text else text
        head = stack.split("\n", 1)[0]
        name, _, message = head.partition(": ")
        return PluginFailure(name or "Error", message or head, stack)

    def _eval(self, script: str, limit: float) -> Any:
        try:
            return self._context.eval(script, timeout_sec=max(limit, 0.001))
        except Exception as error:  # noqa: BLE001 — mini-racer's exceptions become plain failures
            raise self._failure(error) from None

    def _call_js(self, method: str, *args: Any, limit: float) -> Any:
        # One small script with the arguments as JSON literals: each round trip to the
        # isolate's thread is the cost (~0.2 ms), and eval is the cheapest of mini-racer's ways.
        script = f"{self._host}.{method}({', '.join(json.dumps(arg) for arg in args)})"
        return self._eval(script, limit)

    def close(self) -> None:
        self._context.close()

    # --- calls --------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self.exports

    def call(self, name: str, args: list[Any]) -> Any:
        """Run hook ``name`` (or ``job:<name>``) with ``args`` and meta; its plain result."""
        runtime = self._runtime
        # The call's own limit, as the worker set it for this call: TASK_TIMEOUT for hooks,
        # more for scheduled tasks and jobs (the progress marker holds its deadline).
        marked = runtime.marker.read()[0] - time.monotonic()
        seconds = min(marked, 4 * runtime.task_timeout) if marked > 0.1 else runtime.task_timeout
        limit = max(seconds - ALARM_MARGIN, 0.01)
        deadline = time.monotonic() + limit
        self._calls += 1
        call_id = self._calls
        try:
            # A hook that finishes without waiting answers at once (one round trip per event).
            text = self._call_js("start", call_id, name, args, int(max(limit - GUARD_LEAD, 0.01) * 1000), limit=limit)
            # Promise callbacks run when each script ends: only a poll's answer shows what is still pending.
            polled = False
            while True:
                if len(text) > MAX_POLL_BYTES:
                    raise PluginError(f"Plugin handed over more than {MAX_POLL_BYTES} bytes at once")
                state = json.loads(text)
                self._serve(state["outbox"], deadline)
                if state["done"]:
                    if "error" in state:
                        raise self._error(state["error"])
                    return state.get("value")
                if state["outbox"] or not polled:
                    text, polled = self._call_js("poll", call_id, limit=max(deadline - time.monotonic(), 0.01)), True
                    continue
                left = deadline - time.monotonic()
                if state["timer"] is not None and left > 0:
                    time.sleep(min(max(state["timer"], 0) / 1000, left))
                    self._call_js("fireTimers", int(max(deadline - time.monotonic(), 0) * 1000),
                                  limit=max(deadline - time.monotonic(), 0.01))
                    text = self._call_js("poll", call_id, limit=max(deadline - time.monotonic(), 0.01))
                    continue
                if left <= 0 or state["timer"] is not None:
                    raise PluginError(f"Script execution timed out after promise waited for {_plural(round(seconds))}")
                raise PluginError("Plugin call never finished: it waits on a promise that nothing will settle")
        except BaseException:
            try:
                self._call_js("abandon", call_id, limit=1.0)
            except Exception:  # noqa: BLE001 — a spent isolate has nothing to abandon
                pass
            raise

    def _error(self, described: dict[str, Any]) -> Exception:
        name = str(described.get("name") or "Error")
        message = str(described.get("message") or "")
        stack = str(described.get("stack") or f"{name}: {message}")
        if name == "RetryError":
            return RetryFailure(name, message, stack)
        return PluginFailure(name, message, stack)

    def _serve(self, outbox: list[dict[str, Any]], deadline: float) -> bool:
        """Carry out what the plugin asked for; True when a meta request was answered."""
        runtime, spec = self._runtime, self._spec
        answered = False
        for item in outbox:
            kind = item.get("t")
            if kind == "log":
                runtime.log(spec, str(item.get("level", "LOG")), (str(item.get("message", "")),))
            elif kind == "capture":
                arguments = item.get("args") or [None, {}]
                runtime.defer(spec, "posthog", "capture", tuple(arguments), {})
            elif kind == "meta":
                ok, value = self._meta(item)
                left = max(deadline - time.monotonic(), 0.01)
                self._call_js("resolve", item["id"], ok, value, limit=left)
                answered = True
        return answered

    def _meta(self, item: dict[str, Any]) -> tuple[bool, Any]:
        api, method = str(item.get("api")), str(item.get("method"))
        args = item.get("args") or []
        kwargs = {str(key): value for key, value in (item.get("kwargs") or {}).items() if value is not None}
        try:
            value = self._runtime.request(self._spec, api, method, tuple(args), kwargs)
        except (PluginError, RetryError) as error:
            return False, str(error)
        if api == "fetch" and isinstance(value, dict):
            content = bytes(value.get("content") or b"")
            value = {"status": value.get("status"), "ok": value.get("ok"), "url": value.get("url"),
                     "headers": dict(value.get("headers") or {}),
                     "text": content.decode(value.get("encoding") or "utf-8", errors="replace")}
        return True, value


class JsExports:
    """The object the lifecycle reads exports from: Python names bound to the isolate's hooks."""

    def __init__(self, plugin: JsPlugin) -> None:
        self._plugin = plugin
        for js_name, py_name in HOOKS.items():
            if plugin.has(js_name):
                setattr(self, py_name, self._bound(js_name))
        jobs = [name[4:] for name in plugin.exports if name.startswith("job:")]
        if plugin.has("jobs"):
            self.jobs = {job: self._bound(f"job:{job}") for job in jobs}

    def _bound(self, name: str) -> Any:
        plugin = self._plugin

        def hook(*args: Any) -> Any:
            # The last argument is the Python meta the runner passes: the isolate has its own.
            return plugin.call(name, list(args[:-1]))

        hook.__name__ = name
        return hook

    def dispose(self) -> None:
        self._plugin.close()
