"""Who a meta call is made for: the plugin config a worker request belongs to.

Kept free of Django imports so that worker-side code may import it too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PluginContext:
    """The plugin config a meta call acts for.

    The main process builds it from its own rows, never from what a worker
    says, so a plugin can only reach its own cache, storage and log.
    """

    plugin_config_id: int
    plugin_id: int
    team_id: int | None
    plugin_name: str
