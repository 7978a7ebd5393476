"""Which plugin configs are in force, read once per (re)load in the main process.

(spec: plugins.md §1.1, §1.5, §2.1.) A config is in force when it is
enabled, its team's organization has ``plugins_access_level > 0`` and its
plugin belongs to that organization or is global. :func:`load_inventory`
reads those configs with their plugins in one query and their attachments
in one more, loads each plugin's code (cached across reloads while the
plugin row is unchanged) and builds the per-team chains in plugin order.

A plugin whose code cannot be loaded has its error recorded on each of its
configs and is left out of the chains, but not disabled (spec §1.2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import F, Q

from plugin_server.exceptions import PluginLoadError
from plugin_server.models import Plugin, PluginConfig
from plugin_server.plugins.lifecycle import ConfigSpec
from plugin_server.plugins.meta.config import config_with_defaults, load_attachments
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.errors import PluginErrorRecord, record_plugin_errors


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


def in_force_configs() -> Iterable[PluginConfig]:
    """The in-force configs with their plugins, in plugin order (one query)."""
    return (
        PluginConfig.objects.filter(enabled=True, team__isnull=False, team__organization__plugins_access_level__gt=0)
        .filter(Q(plugin__organization_id=F("team__organization_id")) | Q(plugin__is_global=True))
        .select_related("plugin")
        .order_by("order", "id")
    )


class CodeCache:
    """Loaded plugin code by plugin id, reused while ``updated_at`` is unchanged."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self._entries: dict[int, tuple[str, Any, PluginLoadError | None]] = {}

    def load(self, plugin: Plugin) -> tuple[Any, PluginLoadError | None]:
        from plugin_server.plugins.loader import load_plugin_code

        stamp = plugin.updated_at.isoformat() if plugin.updated_at else ""
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
            version=f"{config.updated_at.isoformat()}|{plugin.updated_at.isoformat()}",
            code=code,
            config=config_with_defaults(plugin.config_schema, config.config),
            attachments={key: dict(value) for key, value in attachments.get(config.id, {}).items()},
        )
        assert config.team_id is not None
        inventory.chains[config.team_id] = inventory.chains.get(config.team_id, ()) + (config.id,)
    if load_errors:
        # Logged there too, with the config and team ids.
        record_plugin_errors(load_errors)
    return inventory
