"""Plain factory functions with defaults for parents: org → team → plugin → config → event."""

from __future__ import annotations

import itertools
from typing import Any

from plugin_server.models import Organization, Plugin, PluginAttachment, PluginConfig, Team

_counter = itertools.count(1)


def create_organization(**fields: Any) -> Organization:
    fields.setdefault("name", f"Org {next(_counter)}")
    fields.setdefault("plugins_access_level", Organization.PluginsAccessLevel.ROOT)
    return Organization.objects.create(**fields)


def create_team(organization: Organization | None = None, **fields: Any) -> Team:
    fields.setdefault("name", f"Team {next(_counter)}")
    fields.setdefault("api_token", f"token-{next(_counter)}")
    return Team.objects.create(organization=organization or create_organization(), **fields)


def create_plugin(organization: Organization | None = None, source: str | None = None, **fields: Any) -> Plugin:
    fields.setdefault("name", f"plugin-{next(_counter)}")
    if source is not None:
        fields.setdefault("plugin_type", Plugin.PluginType.SOURCE)
        fields["source"] = source
    return Plugin.objects.create(organization=organization or create_organization(), **fields)


def create_plugin_config(
    team: Team | None = None, plugin: Plugin | None = None, **fields: Any
) -> PluginConfig:
    team = team or create_team()
    plugin = plugin or create_plugin(organization=team.organization, source="def process_event(event, meta):\n    return event\n")
    fields.setdefault("enabled", True)
    fields.setdefault("order", 0)
    fields.setdefault("config", {})
    return PluginConfig.objects.create(team=team, plugin=plugin, **fields)


def create_attachment(plugin_config: PluginConfig, key: str, contents: bytes, **fields: Any) -> PluginAttachment:
    fields.setdefault("content_type", "application/octet-stream")
    fields.setdefault("file_name", f"{key}.bin")
    return PluginAttachment.objects.create(
        plugin_config=plugin_config,
        team=plugin_config.team,
        key=key,
        contents=contents,
        file_size=len(contents),
        **fields,
    )


def make_event(**fields: Any) -> dict[str, Any]:
    """A captured event as the capture endpoint hands it to the plugin server."""
    event: dict[str, Any] = {
        "event": "$pageview",
        "distinct_id": "my_id",
        "properties": {"$current_url": "https://example.com/"},
        "timestamp": "2020-02-23T02:15:00.000Z",
    }
    event.update(fields)
    return event


def store_element_group(sink: Any, team_id: int, elements: list[Any]) -> str:
    """Write one autocapture event with these elements through ``sink`` (a PostgresSink); the hash its row got."""
    from datetime import datetime, timezone

    from django.db import transaction

    from plugin_server.ingestion.uuidt import uuidt
    from plugin_server.models import Event
    from plugin_server.sinks.base import PreparedBatch, PreparedEvent

    event = PreparedEvent(str(uuidt()), team_id, "d", "$autocapture", {}, datetime.now(timezone.utc), elements)
    with transaction.atomic():
        sink.write(PreparedBatch(events=[event]))
    return str(Event.objects.filter(team_id=team_id).latest("id").elements_hash)
