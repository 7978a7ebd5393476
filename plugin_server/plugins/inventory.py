"""Which plugin configs are in force, read once per (re)load in the main process.

A config is in force when it is
enabled, its team's organization has ``plugins_access_level > 0`` and its
plugin belongs to that organization or is global. :func:`load_inventory`
reads those configs with their plugins in one query and their attachments
in one more, loads each plugin's code (cached across reloads while the
plugin row is unchanged) and builds the per-team chains in plugin order.

A plugin whose code cannot be loaded has its error recorded on each of its
configs and is left out of the chains, but not disabled.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import F, Q

from plugin_server.exceptions import PluginLoadError
from plugin_server.models import Plugin, PluginConfig
from plugin_server.plugins.lifecycle import ConfigSpec
from plugin_server.plugins.meta.config import config_with_defaults, load_attachments
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.errors import PluginErrorRecord, record_plugin_errors

logger = logging.getLogger(__name__)

# How many teams the start-up / reload line names.
MOST_TEAMS_LISTED = 20


@dataclass
class Inventory:
    """The plugin configs in force at one moment, ready to ship to workers."""

    specs: dict[int, ConfigSpec] = field(default_factory=dict)
    contexts: dict[int, PluginContext] = field(default_factory=dict)
    # team id → config ids with loadable code, in plugin order.
    chains: dict[int, tuple[int, ...]] = field(default_factory=dict)


def context_of(config: PluginConfig) -> PluginContext:
    return PluginContext(
        plugin_config_id=config.id,
        plugin_id=config.plugin_id,
        team_id=config.team_id,
        plugin_name=config.plugin.name or f"plugin-id-{config.plugin_id}",
    )


def _has_field(model: Any, name: str) -> bool:
    return any(field.name == name for field in model._meta.get_fields())


def _stamp(moment: datetime | None) -> str:
    # Today's PostHog leaves Plugin.updated_at NULL until the plugin is changed.
    return moment.isoformat() if moment is not None else ""


def in_force_configs() -> Iterable[PluginConfig]:
    """The in-force configs with their plugins, in plugin order (one query).

    Where the host's table has PostHog's ``deleted`` flag (today's), a config
    the user deleted is never in force, whatever ``enabled`` says."""
    configs = PluginConfig.objects.filter(enabled=True, team__isnull=False, team__organization__plugins_access_level__gt=0)
    if _has_field(PluginConfig, "deleted"):
        configs = configs.exclude(**{"deleted": True})  # a host field the stand-ins lack
    return (
        configs.filter(Q(plugin__organization_id=F("team__organization_id")) | Q(plugin__is_global=True))
        .select_related("plugin")
        .order_by("order", "id")
    )


def unsupported_reason(config: PluginConfig) -> str | None:
    """Why this server must not run ``config``, or None.

    Today's PostHog added event ``filters`` to a config (the plugin runs
    only on matching events): this server does not evaluate them, and running
    the plugin on every event instead would be wrong, so such a config is
    refused with this reason as its error."""
    if getattr(config, "filters", None):
        return (
            "This plugin config has event filters (PluginConfig.filters), which this plugin server does not apply;"
            " it is not run. Remove the filters to run it on every event."
        )
    return None


class CodeCache:
    """Loaded plugin code by plugin id, reused while ``updated_at`` is unchanged."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self._entries: dict[int, tuple[str, Any, PluginLoadError | None]] = {}

    def load(self, plugin: Plugin) -> tuple[Any, PluginLoadError | None]:
        from plugin_server.plugins.loader import load_plugin_code

        stamp = _stamp(plugin.updated_at)
        cached = self._entries.get(plugin.id)
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        try:
            code, error = load_plugin_code(plugin, self.base_dir), None
        except PluginLoadError as failure:
            code, error = None, failure
        self._entries[plugin.id] = (stamp, code, error)
        return code, error


def load_inventory(code_cache: CodeCache) -> Inventory:
    """Read the in-force configs and build their specs and chains."""
    inventory = Inventory()
    configs = list(in_force_configs())
    attachments = load_attachments(config.id for config in configs)
    load_errors: list[PluginErrorRecord] = []
    for config in configs:
        plugin = config.plugin
        ctx = context_of(config)
        refused = unsupported_reason(config)
        if refused is not None:
            load_errors.append(PluginErrorRecord(ctx=ctx, message=refused, name="UnsupportedPluginConfig"))
            continue
        code, error = code_cache.load(plugin)
        if error is not None:
            load_errors.append(PluginErrorRecord(ctx=ctx, message=str(error), name=type(error).__name__))
            continue
        inventory.contexts[config.id] = ctx
        inventory.specs[config.id] = ConfigSpec(
            plugin_config_id=config.id,
            plugin_id=plugin.id,
            team_id=config.team_id,
            plugin_name=ctx.plugin_name,
            order=config.order or 0,
            version=f"{_stamp(config.updated_at)}|{_stamp(plugin.updated_at)}",
            code=code,
            config=config_with_defaults(plugin.config_schema, config.config),
            attachments={key: dict(value) for key, value in attachments.get(config.id, {}).items()},
        )
        assert config.team_id is not None
        inventory.chains[config.team_id] = inventory.chains.get(config.team_id, ()) + (config.id,)
    if load_errors:
        # Logged there too, with the config and team ids.
        record_plugin_errors(load_errors)
    logger.info("%s", describe_inventory(inventory))
    return inventory


def describe_inventory(inventory: Inventory, most_teams: int = MOST_TEAMS_LISTED) -> str:
    """One line for the server's log: which plugin configs are in force, team by team.

    ``Plugins in force: 2 configs for 2 teams; team 1: Demo greeter (config 1); team 7: ...``,
    at most ``most_teams`` teams named (a large installation would otherwise
    log a novel at every reload).
    """
    if not inventory.chains:
        return "Plugins in force: none"
    configs = sum(len(chain) for chain in inventory.chains.values())
    teams = sorted(inventory.chains)
    parts = [f"Plugins in force: {configs} config{'s' if configs != 1 else ''} for {len(teams)} team{'s' if len(teams) != 1 else ''}"]
    for team_id in teams[:most_teams]:
        named = ", ".join(
            f"{inventory.contexts[config_id].plugin_name} (config {config_id})" for config_id in inventory.chains[team_id]
        )
        parts.append(f"team {team_id}: {named}")
    if len(teams) > most_teams:
        parts.append(f"and {len(teams) - most_teams} more teams")
    return "; ".join(parts)
