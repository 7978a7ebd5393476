"""What the main process does with a worker's report: errors, logs, set-up news.

A worker's task result carries, besides its value, the plugin errors it
caught, the plugin's log lines, fire-and-forget meta calls
(``posthog.capture``) and "system" news (an instance loaded, failed to load,
unloaded). :class:`Reporter` turns them into writes, batched per result:
one UPDATE + one INSERT for all errors (``record_plugin_errors``), log lines
into the host's buffered log writer. Everything a worker sends is checked
here before use: the worker is untrusted, so a config id it names must be
one the task was about.

``run_plugin`` swaps in a reporter that prints instead of writing
(:class:`plugin_server.management.commands.run_plugin.PrintingReporter`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from datetime import datetime, timezone
from typing import Any

from plugin_server.metrics import (
    PLUGIN_METHOD,
    PLUGIN_METHOD_ERROR,
    PLUGIN_PROCESS_EVENT,
    PLUGIN_PROCESS_EVENT_BATCH,
    PLUGIN_TASK,
    PLUGIN_TASK_ERROR,
    WORKER_REPORT_DROPPED,
    get_metrics,
)
from plugin_server.plugin_health import HEALTH
from plugin_server.plugins import call_timing
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.errors import PluginErrorRecord, clear_plugin_errors, disable_plugin_config, record_plugin_errors
from plugin_server.plugins.meta.logger import LogEntry, server_instance_id
from plugin_server.workers.protocol import check_reply

logger = logging.getLogger(__name__)

LOG_TYPES = frozenset({"DEBUG", "LOG", "INFO", "WARN", "ERROR"})
SYSTEM_MESSAGES = {
    "loaded": ("INFO", "Plugin loaded (instance ID {instance}).".format),
    "setup_failed": ("ERROR", "Plugin failed to load and was disabled (instance ID {instance}).".format),
    "unloaded": ("INFO", "Plugin unloaded (instance ID {instance}).".format),
    "unload_failed": ("ERROR", "Plugin failed to unload (instance ID {instance}).".format),
}


class Reporter:
    """Writes a worker's report to the database (the server's reporter)."""

    def __init__(self, host: Any) -> None:
        self.host = host

    def errors(self, records: list[PluginErrorRecord]) -> None:
        record_plugin_errors(records)

    def log(self, entry: LogEntry) -> None:
        self.host.log_writer.add(entry)

    def loaded(self, ctx: PluginContext) -> None:
        clear_plugin_errors([ctx.plugin_config_id])

    def disable(self, ctx: PluginContext, cause: str = "") -> None:
        disable_plugin_config(ctx, cause)

    def deferred(self, ctx: PluginContext, api: str, method: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.host.call_deferred(ctx, api, method, args, kwargs)

    def flush(self) -> None:
        self.host.flush()


def setup_failure(news: dict[str, Any]) -> str:
    """``KeyError: 'x'`` from a "setup_failed" news; a load error's message already starts with its cause."""
    name, message = news.get("name"), str(news.get("message") or "")
    return message if name in (None, "PluginLoadError") else f"{name}: {message}"


def emit_timing(ctx: PluginContext, what: str, calls: int, total_ms: float, errors: int) -> None:
    """The original's per-plugin metrics, one per batch: the mean call time and the error count."""
    metrics = get_metrics()
    name = ctx.plugin_name
    mean = total_ms / calls
    if what.startswith("task."):
        # "task.<kind>.<task>": a scheduled task or a job, named per config.
        _task, kind, task = what.split(".", 2)
        metrics.timing(PLUGIN_TASK.format(kind=kind, task=task, config_id=ctx.plugin_config_id), mean)
        if errors:
            metrics.incr(PLUGIN_TASK_ERROR.format(kind=kind, task=task, config_id=ctx.plugin_config_id), errors)
        return
    if what == "process_event":
        metrics.timing(PLUGIN_PROCESS_EVENT, mean, {"plugin": name, "teamId": ctx.team_id or 0})
    elif what == "process_event_batch":
        metrics.timing(PLUGIN_PROCESS_EVENT_BATCH, mean, {"plugin": name, "teamId": ctx.team_id or 0})
        metrics.timing(PLUGIN_METHOD.format(plugin=name, method=what), mean)
    elif what in ("on_event", "on_snapshot"):
        # The original used the on_event names for on_snapshot too.
        what = "on_event"
        metrics.timing(PLUGIN_METHOD.format(plugin=name, method=what), mean)
    if errors:
        metrics.incr(PLUGIN_METHOD_ERROR.format(plugin=name, method=what), errors)


def _timestamp(value: object) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    return datetime.now(timezone.utc)


def apply_report(
    reporter: Reporter,
    result: dict[str, Any],
    contexts: Callable[[int], PluginContext | None],
    allowed: Collection[int] | None,
    on_system: Callable[[str, int, dict[str, Any]], bool],
) -> None:
    """Act on one result message; ``allowed`` None means any known config.

    ``on_system`` returns whether a "loaded" is the config's first since it
    changed: only then is its error cleared, so that a replaced worker
    setting the plugin up again does not wipe the error that killed the old one.
    """

    def context(config_id: object) -> PluginContext:
        check_reply(isinstance(config_id, int) and (allowed is None or config_id in allowed), "config id")
        ctx = contexts(config_id)  # type: ignore[arg-type]
        check_reply(ctx is not None, "unknown config id")
        assert ctx is not None
        return ctx

    # Set-up news first: a successful set-up clears the error column, and
    # errors of the same task must land after that.
    for news in result.get("system") or []:
        check_reply(isinstance(news, dict) and news.get("what") in SYSTEM_MESSAGES, "system entry")
        ctx = context(news.get("cfg"))
        level, text = SYSTEM_MESSAGES[news["what"]]
        reporter.log(LogEntry.for_context(ctx, "SYSTEM", level, text(instance=server_instance_id())))  # type: ignore[arg-type]
        first = on_system(news["what"], ctx.plugin_config_id, news)
        if news["what"] == "loaded":
            # The server's own line for each instance started.
            logger.info(
                "Loaded plugin %s ID %s (config %s)",
                ctx.plugin_name,
                ctx.plugin_id,
                ctx.plugin_config_id,
                extra={"plugin_config_id": ctx.plugin_config_id, "team_id": ctx.team_id},
            )
        if news["what"] == "loaded" and first:
            reporter.loaded(ctx)
        elif news["what"] == "setup_failed":
            reporter.disable(ctx, setup_failure(news))
    errors = result.get("errors") or []
    check_reply(isinstance(errors, list), "errors")
    records = []
    for entry in errors:
        check_reply(isinstance(entry, list) and len(entry) == 5, "error entry")
        config_id, name, message, stack, event = entry
        records.append(
            PluginErrorRecord(
                ctx=context(config_id),
                message=str(message),
                name=str(name) if name is not None else None,
                stack=str(stack) if stack is not None else None,
                event=event if isinstance(event, dict) else None,
            )
        )
    if records:
        reporter.errors(records)
    for entry in result.get("logs") or []:
        check_reply(isinstance(entry, list) and len(entry) == 4 and entry[1] in LOG_TYPES, "log entry")
        ctx = context(entry[0])
        reporter.log(LogEntry.for_context(ctx, "CONSOLE", entry[1], str(entry[2]), timestamp=_timestamp(entry[3])))
    for entry in result.get("deferred") or []:
        check_reply(isinstance(entry, list) and len(entry) == 5, "deferred call")
        config_id, api, method, args, kwargs = entry
        check_reply(isinstance(args, list) and isinstance(kwargs, dict), "deferred arguments")
        ctx = context(config_id)
        try:
            reporter.deferred(ctx, str(api), str(method), args, kwargs)
        except Exception:  # noqa: BLE001 — fire-and-forget: the plugin is gone, log it
            logger.exception("deferred meta.%s.%s failed", api, method, extra={"plugin_config_id": ctx.plugin_config_id})
    for entry in result.get("timings") or []:
        # [config id, call, calls, total ms, errors, dropped events, time buckets]
        check_reply(isinstance(entry, list) and len(entry) == 7 and isinstance(entry[1], str), "timing")
        check_reply(all(isinstance(number, (int, float)) for number in entry[2:6]) and entry[2] > 0, "timing numbers")
        buckets = entry[6]
        check_reply(isinstance(buckets, list) and len(buckets) == call_timing.BUCKETS
                    and all(isinstance(count, int) and count >= 0 for count in buckets), "timing buckets")
        ctx = context(entry[0])
        emit_timing(ctx, entry[1], int(entry[2]), float(entry[3]), int(entry[4]))
        HEALTH.record(ctx.plugin_config_id, entry[1], int(entry[2]), float(entry[3]), int(entry[4]), int(entry[5]), buckets)
    dropped = result.get("dropped")
    if isinstance(dropped, int) and dropped > 0:
        get_metrics().incr(WORKER_REPORT_DROPPED, dropped)
        logger.warning("a worker dropped %d log lines or errors over its per-task bound", dropped)
