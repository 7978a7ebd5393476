"""The worker pool's side of the export lane (plugin_server/export_lane.py).

The lane asks the pool three things: which configs of a team export
``on_event`` (``on_snapshot`` for ``$snapshot``), to run one config's export
of a chunk of stored events on the team's worker (returning how many calls
ran and how many timed out), and to disable a config whose calls keep
timing out. These helpers hold the part that does not depend on how the
pool reaches a worker.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.errors import PluginErrorRecord
from plugin_server.plugins.meta.logger import LogEntry
from plugin_server.workers.effects import Reporter


class _Pool(Protocol):
    reporter: Reporter

    @property
    def inventory(self) -> Any: ...

    def _wants(self, config_ids: tuple[int, ...], methods: tuple[str, ...]) -> bool: ...

    def _drop(self, config_id: int) -> None: ...

    def context(self, config_id: int) -> PluginContext | None: ...


def exporters(pool: _Pool, team_id: Any, snapshot: bool) -> tuple[int, ...]:
    """The configs in the team's chain that export (or may export: not yet set up) the method."""
    method = ("on_snapshot",) if snapshot else ("on_event",)
    chain: tuple[int, ...] = pool.inventory.chains.get(team_id) or ()
    return tuple(config_id for config_id in chain if pool._wants((config_id,), method))


def export_payload(team_id: Any, config_id: int, events: list[Any], concurrency: int) -> dict[str, Any]:
    """An ``on_events`` task for one config: its chain is that config alone."""
    return {"chains": {team_id: (config_id,)}, "events": events, "concurrency": max(1, concurrency)}


def export_stats(value: object) -> dict[str, int]:
    """``{"calls": n, "timeouts": n}`` from a worker's answer (untrusted: anything else counts as nothing)."""
    stats = {"calls": 0, "timeouts": 0}
    if isinstance(value, dict):
        for key in stats:
            number = value.get(key)
            if isinstance(number, int) and not isinstance(number, bool) and number >= 0:
                stats[key] = number
    return stats


def disable_config(pool: _Pool, config_id: int, reason: str) -> None:
    """Disable a config (every enabled config of its plugin in its team), with the reason in its error and log."""
    ctx = pool.context(config_id)
    if ctx is None:
        return
    pool.reporter.errors([PluginErrorRecord(ctx=ctx, message=reason, name="PluginTimeout")])
    pool.reporter.log(LogEntry.for_context(ctx, "SYSTEM", "ERROR", reason))
    pool.reporter.disable(ctx, reason)
    pool._drop(config_id)
    pool.reporter.flush()


def meta_executor(concurrency: int, tasks_per_worker: int) -> ThreadPoolExecutor:
    """Threads serving export tasks' meta requests: as many as the calls that may wait at once."""
    return ThreadPoolExecutor(max_workers=max(4, concurrency * tasks_per_worker), thread_name_prefix="plugin-meta")
