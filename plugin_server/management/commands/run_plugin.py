"""``./manage.py run_plugin PATH_OR_ID --event JSON``: try a plugin on events, as the server would run it.

The plugin (a folder, a zip/tgz archive, or the id of an installed plugin)
runs in a real worker process with the server's sandbox and limits
(``TASK_TIMEOUT``, ``WORKER_MEMORY_LIMIT_MB``, the same isolation), on one
or more events. The command prints the resulting events (or that an event
was dropped), the plugin's log lines and any error, and exits with status 1
when the plugin failed to load, raised, or timed out.

It is a dry run: ``meta.storage`` lives in memory, ``meta.jobs`` and
``posthog.capture`` are printed instead of enqueued, nothing is written to
the plugin tables and no config is disabled. ``meta.cache`` uses the real
Redis under plugin id 0 (or the installed plugin's id) and ``meta.fetch``
the real network rules of the server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from plugin_server.exceptions import PluginError, PluginLoadError
from plugin_server.models import Plugin
from plugin_server.plugins.inventory import Inventory
from plugin_server.plugins.lifecycle import SCHEDULE_KEYS, ConfigSpec
from plugin_server.plugins.loader import load_plugin_code
from plugin_server.plugins.meta.config import config_with_defaults
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.errors import PluginErrorRecord
from plugin_server.plugins.meta.logger import LogEntry
from plugin_server.workers.effects import Reporter
from plugin_server.workers.pool import PoolSettings, WorkerPool

# The config id of a dry run: no row has it, and it is not the progress marker's "none" (0).
DRY_RUN_CONFIG_ID = -1
DEFAULT_TEAM_ID = 1


class PrintingReporter(Reporter):
    """Keeps what a real run would write, for printing."""

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        self.lines: list[str] = []
        self.failures: list[str] = []

    def errors(self, records: list[PluginErrorRecord]) -> None:
        for record in records:
            name = f"{record.name}: " if record.name else ""
            self.failures.append(f"{name}{record.message}")
            self.lines.append(f"[PLUGIN ERROR] {name}{record.message}")

    def log(self, entry: LogEntry) -> None:
        self.lines.append(f"[{entry.source} {entry.type}] {entry.message}")
        if entry.source == "SYSTEM" and entry.type == "ERROR":
            self.failures.append(entry.message)

    def loaded(self, ctx: PluginContext) -> None:
        pass

    def disable(self, ctx: PluginContext) -> None:
        pass

    def deferred(self, ctx: PluginContext, api: str, method: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.lines.append(f"[{api}.{method}] {json.dumps(args)} {json.dumps(kwargs) if kwargs else ''}".rstrip())

    def flush(self) -> None:
        pass


class DryRunHost:
    """The server's MetaHost, except storage in memory and jobs printed."""

    def __init__(self, reporter: PrintingReporter) -> None:
        from plugin_server.plugins.meta.host import MetaHost

        self.real = MetaHost()
        self.reporter = reporter
        self.storage: dict[str, Any] = {}
        self.log_writer = self.real.log_writer

    def call(self, ctx: PluginContext, api: str, method: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if api == "storage":
            key = str(args[0]) if args else str(kwargs.get("key"))
            if method == "get":
                default = args[1] if len(args) > 1 else kwargs.get("default")
                return self.storage.get(key, default)
            if method == "set":
                self.storage[key] = args[1] if len(args) > 1 else kwargs.get("value")
            else:
                self.storage.pop(key, None)
            return None
        if api == "jobs":
            self.reporter.deferred(ctx, api, method, list(args), dict(kwargs))
            return None
        return self.real.call(ctx, api, method, args, kwargs)

    def flush(self) -> None:
        pass


def parse_config(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value that parses as JSON is taken as JSON, else as text."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"--config expects key=value, got {pair!r}")
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return values


def parse_events(texts: Sequence[str], team_id: int) -> list[dict[str, Any]]:
    """Events from ``--event`` values: a JSON object, a JSON list of them, or ``@file``."""
    events: list[dict[str, Any]] = []
    for text in texts:
        if text.startswith("@"):
            try:
                with open(text[1:], encoding="utf-8") as handle:
                    text = handle.read()
            except OSError as error:
                raise CommandError(f"--event {text}: {error.strerror}") from None
        try:
            value = json.loads(text)
        except ValueError as error:
            raise CommandError(f"--event is not valid JSON: {error}") from None
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, dict):
                raise CommandError("--event must be a JSON object (or a list of objects)")
            item.setdefault("team_id", team_id)
            item.setdefault("distinct_id", "run-plugin")
            item.setdefault("properties", {})
            events.append(item)
    return events


def find_plugin(target: str) -> Plugin:
    """An unsaved Plugin row for a folder or archive, or the installed plugin with that id."""
    if os.path.isdir(target):
        return Plugin(name=os.path.basename(os.path.abspath(target)), plugin_type="local", url=f"file:{os.path.abspath(target)}")
    if os.path.isfile(target):
        with open(target, "rb") as handle:
            return Plugin(name=os.path.basename(target), plugin_type="custom", archive=handle.read())
    if target.isdigit():
        plugin = Plugin.objects.filter(id=int(target)).first()
        if plugin is None:
            raise CommandError(f"No installed plugin with id {target}")
        return plugin
    raise CommandError(f"{target!r} is neither a folder, an archive, nor an installed plugin id")


class Command(BaseCommand):
    help = "Run one plugin on events in the server's sandbox; print the events, log lines and errors."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("plugin", help="plugin folder, .zip/.tgz archive, or installed plugin id")
        parser.add_argument("--event", action="append", default=[], help="event JSON (object or list; @file reads a file); repeatable")
        parser.add_argument("--config", action="append", default=[], help="config value key=value (JSON or text); repeatable")
        parser.add_argument("--team", type=int, default=DEFAULT_TEAM_ID, help="team id of events that name none")
        parser.add_argument("--task", choices=sorted(SCHEDULE_KEYS), help="also run this scheduled task once")
        parser.add_argument("--timeout", type=float, help="TASK_TIMEOUT for this run (seconds)")

    def handle(self, *args: Any, **options: Any) -> None:
        events = parse_events(options["event"], options["team"])
        if not events and not options["task"]:
            raise CommandError("give at least one --event (or a --task)")
        plugin = find_plugin(options["plugin"])
        try:
            code = load_plugin_code(plugin, base_dir="/")
        except PluginLoadError as error:
            raise CommandError(str(error)) from None
        team_ids = {event["team_id"] for event in events} or {options["team"]}
        ctx = PluginContext(
            plugin_config_id=DRY_RUN_CONFIG_ID, plugin_id=plugin.pk or 0,
            team_id=min(team_ids),
            plugin_name=str(code.plugin_json.get("name") or plugin.name or "plugin") if plugin.pk is None else str(plugin.name),
        )
        spec = ConfigSpec(
            plugin_config_id=DRY_RUN_CONFIG_ID,
            plugin_id=ctx.plugin_id,
            team_id=ctx.team_id,
            plugin_name=ctx.plugin_name,
            order=0,
            version="run_plugin",
            code=code,
            config=config_with_defaults(code.config_schema, parse_config(options["config"])),
        )
        inventory = Inventory(
            specs={spec.plugin_config_id: spec},
            contexts={spec.plugin_config_id: ctx},
            chains={team_id: (spec.plugin_config_id,) for team_id in team_ids},
        )
        reporter = PrintingReporter(None)
        host = DryRunHost(reporter)
        overrides: dict[str, Any] = {"concurrency": 1}
        if options["timeout"]:
            overrides["task_timeout"] = options["timeout"]
        pool = WorkerPool(PoolSettings.from_config(**overrides), host=host, reporter=reporter)
        pool.start(inventory)
        try:
            results = self._run(pool, events, options["task"])
        finally:
            pool.stop()
            host.real.close()
        self._print(events, results, reporter)
        if reporter.failures:
            raise CommandError(f"the plugin failed: {reporter.failures[0]}")

    def _run(self, pool: WorkerPool, events: list[dict[str, Any]], task: str | None) -> list[dict[str, Any] | None]:
        results: list[dict[str, Any] | None] = []
        for event in events:
            # One at a time, so a dropped event is reported in its place.
            kept = pool.process_events([json.loads(json.dumps(event))])
            results.append(kept[0] if kept else None)
        survivors = [result for result in results if result is not None]
        if survivors:
            pool.on_events(survivors)
        if task:
            try:
                pool.run_scheduled(DRY_RUN_CONFIG_ID, task)
            except PluginError as error:
                pool.reporter.errors([PluginErrorRecord(ctx=pool.inventory.contexts[DRY_RUN_CONFIG_ID], message=str(error))])
        return results

    def _print(self, events: list[dict[str, Any]], results: list[dict[str, Any] | None], reporter: PrintingReporter) -> None:
        for index, result in enumerate(results):
            if result is None:
                self.stdout.write(f"event {index + 1}: dropped")
            else:
                self.stdout.write(f"event {index + 1}: {json.dumps(result, sort_keys=True, default=str)}")
        for line in reporter.lines:
            self.stdout.write(line)
