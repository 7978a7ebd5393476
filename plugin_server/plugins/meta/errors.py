"""Recording a plugin's failure: on its plugin config and in its log.

``posthog_pluginconfig.error`` holds only the
latest error as ``{message, time, name, stack, event}``; each error also
becomes a log entry with source PLUGIN and type ERROR. Called in the main
process by the worker pool whenever a plugin raises or times out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from django.db import connection, transaction

from plugin_server.models import PluginConfig
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.sentry import report_plugin_error
from plugin_server.plugins.meta.logger import LogEntry, store_log_entries

logger = logging.getLogger(__name__)


def iso_time(moment: datetime) -> str:
    """``2021-05-17T10:00:00.123Z``: the form JavaScript's toISOString gave."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class PluginErrorRecord:
    """One failure of one plugin config, ready to be written."""

    ctx: PluginContext
    message: str
    name: str | None = None
    stack: str | None = None
    event: Mapping[str, Any] | None = None
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def log_message(self) -> str:
        """The plugin log entry's text: the plugin's traceback when there is one (it ends with the message)."""
        return self.stack if self.stack else self.message

    def as_json(self) -> dict[str, Any]:
        """The value of ``posthog_pluginconfig.error`` (a plain message has no name)."""
        error: dict[str, Any] = {"message": self.message, "time": iso_time(self.time)}
        if self.name is not None:
            error["name"] = self.name
            error["stack"] = self.stack
            error["event"] = dict(self.event) if self.event is not None else None
        return error


def record_plugin_errors(records: Sequence[PluginErrorRecord]) -> None:
    """Write many errors with one UPDATE (latest error per config) and one INSERT.

    A batch where a plugin fails on every event thus costs two statements.
    """
    if not records:
        return
    latest: dict[int, PluginErrorRecord] = {}
    for record in records:
        latest[record.ctx.plugin_config_id] = record
    values_sql = ", ".join(["(%s, %s::jsonb)"] * len(latest))
    params: list[int | str] = []
    for config_id, record in latest.items():
        # default=str: an event may carry values JSON cannot hold (a datetime a plugin set).
        params += [config_id, json.dumps(record.as_json(), default=str)]
    table = connection.ops.quote_name(PluginConfig._meta.db_table)
    entries = [
        LogEntry.for_context(record.ctx, "PLUGIN", "ERROR", record.log_message, timestamp=record.time) for record in records
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} AS pc SET error = v.error FROM (VALUES {values_sql}) AS v(id, error) WHERE pc.id = v.id",
            params,
        )
    # Outside the error's transaction (or in a savepoint of the caller's): a
    # log write the table refuses is counted and logged, and never undoes
    # the error record.
    store_log_entries(entries)
    for record in records:
        logger.info(
            "plugin error recorded for %s (config %s): %s",
            record.ctx.plugin_name,
            record.ctx.plugin_config_id,
            record.message,
            extra={"plugin_config_id": record.ctx.plugin_config_id, "team_id": record.ctx.team_id},
        )
        # Sentry (when SENTRY_DSN is set), tagged team / plugin / plugin_config; throttled per config.
        report_plugin_error(record.ctx.team_id, record.ctx.plugin_name, record.ctx.plugin_id,
                            record.ctx.plugin_config_id, record.name, record.message, record.stack)


def record_plugin_error(
    ctx: PluginContext,
    error_name: str | None,
    message: str,
    stack: str | None = None,
    event: Mapping[str, Any] | None = None,
) -> None:
    """Record one error of ``ctx``'s plugin config (``error_name`` None: a plain message)."""
    record_plugin_errors([PluginErrorRecord(ctx=ctx, message=message, name=error_name, stack=stack, event=event)])


def clear_plugin_errors(plugin_config_ids: Sequence[int]) -> int:
    """Set ``error`` back to NULL where it is set (an instance started fine); one UPDATE."""
    if not plugin_config_ids:
        return 0
    return int(PluginConfig.objects.filter(id__in=plugin_config_ids, error__isnull=False).update(error=None))


def disable_plugin_config(ctx: PluginContext, cause: str = "") -> int:
    """Disable every enabled config of ``ctx``'s plugin in ``ctx``'s team.

    Returns how many rows changed. The caller writes the SYSTEM log entry;
    the server's log line names the plugin, the config and ``cause``.
    """
    configs = PluginConfig.objects.filter(plugin_id=ctx.plugin_id, enabled=True)
    configs = configs.filter(team__isnull=True) if ctx.team_id is None else configs.filter(team_id=ctx.team_id)
    changed = int(configs.update(enabled=False))
    logger.warning(
        "plugin %s (ID %s) disabled for team %s (config %s) after failing to load: %s",
        ctx.plugin_name,
        ctx.plugin_id,
        ctx.team_id,
        ctx.plugin_config_id,
        cause or "unknown cause",
        extra={"plugin_config_id": ctx.plugin_config_id, "team_id": ctx.team_id},
    )
    return changed
