"""JavaScript and TypeScript plugins in real team workers: V8 isolates through the same pool, meta host and limits."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from plugin_server.models import PluginConfig, PluginLogEntry, PluginStorage
from tests.factories import create_team
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def install_js(source: str, filename: str = "index.ts", **fields: Any) -> PluginConfig:
    """A source plugin whose main file is ``filename`` (TypeScript by default)."""
    return install(json.dumps({filename: source, "plugin.json": json.dumps({"main": filename})}), **fields)


def logs(config: PluginConfig) -> list[tuple[str, str, str]]:
    return [(entry.source, entry.type, entry.message)
            for entry in PluginLogEntry.objects.filter(plugin_config_id=config.id).order_by("timestamp")]


def error_of(config: PluginConfig) -> dict[str, Any]:
    config.refresh_from_db()
    return config.error or {}


TS_HELLO = """import { Plugin, PluginEvent, PluginMeta } from '@posthog/plugin-scaffold'

type Meta = PluginMeta<{ config: { greeting: string } }>

export async function setupPlugin({ global, config }: Meta) {
    global.greeting = config.greeting || 'hello'
}

export function processEvent(event: PluginEvent, { global }: Meta): PluginEvent {
    event.properties = { ...event.properties, greeting: global.greeting as string }
    console.log('processed', event.event, { n: event.properties.n })
    return event
}
"""


def test_typescript_plugin_with_a_type_only_import_processes_events(make_pool):
    """A TS plugin importing types from @posthog/plugin-scaffold runs setupPlugin and processEvent; console goes to its log."""
    config = install_js(TS_HELLO, config={"greeting": "hoi"})
    pool = make_pool()
    out = pool.process_events([event(config.team_id, n=1), event(config.team_id, n=2)])
    assert [item["properties"]["greeting"] for item in out] == ["hoi", "hoi"]
    assert out[0]["properties"]["$plugins_succeeded"] == [f"{config.plugin.name} ({config.id})"]
    assert ("CONSOLE", "LOG", 'processed e1 {"n":1}') in logs(config)
