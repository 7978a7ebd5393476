"""Plugin rows and events for tests that run real workers."""

from __future__ import annotations

from typing import Any

from plugin_server.models import PluginConfig, Team
from tests.factories import create_plugin, create_plugin_config, create_team


def install(source: str, team: Team | None = None, plugin_fields: dict[str, Any] | None = None, **fields: Any) -> PluginConfig:
    """A source plugin with ``source`` enabled for ``team`` (a new team when None)."""
    team = team or create_team()
    plugin = create_plugin(organization=team.organization, source=source, **(plugin_fields or {}))
    return create_plugin_config(team=team, plugin=plugin, **fields)


def event(team_id: int, distinct_id: str = "a", n: int = 0, **fields: Any) -> dict[str, Any]:
    """A captured event of ``team_id``; ``n`` lands in its name and properties."""
    return {"event": f"e{n}", "distinct_id": distinct_id, "team_id": team_id, "properties": {"n": n}, **fields}


def team_of(config: PluginConfig) -> int:
    """The team id of a team's (not a global) plugin config."""
    assert config.team_id is not None
    return config.team_id
