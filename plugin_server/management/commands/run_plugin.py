"""``./manage.py run_plugin PATH_OR_ID --event JSON``: try a plugin on events, as the server would run it.

The plugin (a folder, a zip/tgz archive, or the id of an installed plugin)
runs in a real worker process with the server's sandbox and limits
(``TASK_TIMEOUT``, ``WORKER_MEMORY_LIMIT_MB``, the same isolation), on one
or more events. The command prints the resulting events (or that an event
was dropped), the plugin's log lines and any error, and exits with status 1
when the plugin failed to load, raised, or timed out. An error is printed
as the plugin's traceback (its own frames and file, never the server's), and
the command's last line says what went wrong.

An installed plugin (by id) runs with its installed config: the values and
attachments of its plugin config for ``--team`` (or of its only config),
with the schema's defaults applied and ``--config`` values on top. Its
``file:`` url is resolved against ``BASE_DIR`` as the server does, whatever
the working directory. Required config keys that still have no value are
named before anything runs.

It is a dry run: ``meta.storage`` lives in memory, ``meta.jobs`` and
``posthog.capture`` are printed instead of enqueued, nothing is written to
the plugin tables and no config is disabled. ``meta.cache`` uses the real
Redis under plugin id 0 (or the installed plugin's id) and ``meta.fetch``
the real network rules of the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from plugin_server.exceptions import PluginError, PluginLoadError, PluginsNotRun
from plugin_server.models import Plugin, PluginConfig
from plugin_server.plugins.inventory import Inventory
from plugin_server.plugins.lifecycle import SCHEDULE_KEYS, ConfigSpec
from plugin_server.plugins.loader import load_plugin_code
from plugin_server.plugins.meta.config import config_with_defaults, load_attachments, schema_fields
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
        # What went wrong, in the order it happened: the plugin's own errors
        # (their last line is the cause), then the server's news about them.
        self.failures: list[str] = []
        self.system_failures: list[str] = []

    def errors(self, records: list[PluginErrorRecord]) -> None:
        for record in records:
            name = f"{record.name}: " if record.name else ""
            # The plugin's traceback (its own frames, its file, the cause last) when there is one.
            text = record.stack if record.stack else f"{name}{record.message}"
            self.failures.append(text.splitlines()[-1] if text else record.message)
            self.lines.append(f"[PLUGIN ERROR] {text}")

    def failure(self) -> str | None:
        """The line that says why the run failed: the first plugin error's cause, else the server's message."""
        found = self.failures or self.system_failures
        return found[0] if found else None

    def log(self, entry: LogEntry) -> None:
        message = entry.message
        if entry.source == "SYSTEM":
            # A dry run disables nothing: say what the server would do.
            message = message.replace("and was disabled", "(a server would disable it)")
        self.lines.append(f"[{entry.source} {entry.type}] {message}")
        if entry.source == "SYSTEM" and entry.type == "ERROR":
            self.system_failures.append(message)

    def loaded(self, ctx: PluginContext) -> None:
        pass

    def disable(self, ctx: PluginContext, cause: str = "") -> None:
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


def installed_config(plugin: Plugin, team_id: int | None) -> PluginConfig | None:
    """The plugin config of an installed plugin to run with: the team's, or its only one.

    None when the plugin has no config (for that team): the run then uses the
    schema's defaults and ``--config`` values only.
    """
    configs = list(PluginConfig.objects.filter(plugin_id=plugin.pk).order_by("id"))
    if team_id is not None:
        configs = [config for config in configs if config.team_id == team_id]
    if len(configs) > 1:
        teams = ", ".join(str(config.team_id) for config in configs)
        raise CommandError(
            f"Plugin {plugin.name} ID {plugin.pk} has {len(configs)} configs (teams {teams}): choose one with --team"
        )
    return configs[0] if configs else None


def missing_required_keys(schema: object, config: Mapping[str, Any], attachments: Mapping[str, Any]) -> list[str]:
    """Keys the schema marks required that have no value (or no file, for an attachment)."""
    missing = []
    for field in schema_fields(schema):
        if not field.get("required"):
            continue
        key = field["key"]
        present = key in attachments if field.get("type") == "attachment" else config.get(key) not in (None, "")
        if not present:
            missing.append(key)
    return missing


@contextlib.contextmanager
def plain_warnings() -> Iterator[None]:
    """While the command runs, the server's log says only warnings and errors, as plain lines.

    The command's own output (events, the plugin's log, its errors) is what
    the author reads; the server's JSON lines would only get in between.
    """
    root = logging.getLogger()
    saved = root.level, [(handler, handler.formatter) for handler in root.handlers]
    root.setLevel(logging.WARNING)
    for handler, _ in saved[1]:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    try:
        yield
    finally:
        root.setLevel(saved[0])
        for handler, formatter in saved[1]:
            handler.setFormatter(formatter)


class Command(BaseCommand):
    help = "Run one plugin on events in the server's sandbox; print the events, log lines and errors."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("plugin", help="plugin folder, .zip/.tgz archive, or installed plugin id")
        parser.add_argument("--event", action="append", default=[], help="event JSON (object or list; @file reads a file); repeatable")
        parser.add_argument("--config", action="append", default=[], help="config value key=value (JSON or text); repeatable")
        parser.add_argument(
            "--team", type=int, default=None,
            help="team of events that name none, and whose plugin config an installed plugin runs with "
            f"(default: the config's team, else {DEFAULT_TEAM_ID})",
        )
        parser.add_argument("--task", choices=sorted(SCHEDULE_KEYS), help="also run this scheduled task once")
        parser.add_argument("--timeout", type=float, help="TASK_TIMEOUT for this run (seconds)")

    def handle(self, *args: Any, **options: Any) -> None:
        with plain_warnings():
            self._handle(options)

    def _handle(self, options: dict[str, Any]) -> None:
        plugin = find_plugin(options["plugin"])
        installed = installed_config(plugin, options["team"]) if plugin.pk is not None else None
        team = options["team"] or (installed.team_id if installed is not None else None) or DEFAULT_TEAM_ID
        events = parse_events(options["event"], team)
        if not events and not options["task"]:
            raise CommandError("give at least one --event (or a --task)")
        try:
            code = load_plugin_code(plugin)
        except PluginLoadError as error:
            raise CommandError(str(error)) from None
        values = dict(installed.config or {}) if installed is not None else {}
        values.update(parse_config(options["config"]))
        config = config_with_defaults(code.config_schema, values)
        attachments = load_attachments([installed.pk])[installed.pk] if installed is not None else {}
        missing = missing_required_keys(code.config_schema, config, attachments)
        if missing:
            where = f"on plugin config {installed.pk} (the admin) or " if installed is not None else ""
            raise CommandError(
                f"Missing required config keys for {code.name or plugin.name}: {', '.join(missing)}. "
                f"Set them {where}with --config {missing[0]}=..."
            )
        team_ids = {event["team_id"] for event in events} or {team}
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
            config=config,
            attachments={key: dict(value) for key, value in attachments.items()},
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
        failure = reporter.failure()
        if failure is not None:
            # The last line the author sees: what went wrong, not where the server noticed it.
            raise CommandError(f"the plugin failed: {failure}")

    def _run(self, pool: WorkerPool, events: list[dict[str, Any]], task: str | None) -> list[dict[str, Any] | None]:
        results: list[dict[str, Any] | None] = []
        for event in events:
            # One at a time, so a dropped event is reported in its place.
            try:
                kept = pool.process_events([json.loads(json.dumps(event))])
            except PluginsNotRun as error:
                # Its worker was lost twice (recorded on the config): the server would dead-letter it.
                self.stderr.write(f"event {len(results) + 1}: {error.failed[0][1]}")
                kept = []
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
