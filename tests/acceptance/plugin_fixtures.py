"""The rows acceptance.md's plugin scenarios assume: organization ca30f2ec-…, team 2, plugin 60
"test-maxmind-plugin" (a zip archive holding the test's code), config 39 and attachment 42666."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
import redis

from plugin_server.models import Organization, Plugin, PluginAttachment, PluginConfig, Team
from plugin_server.plugins.meta.fetch import FetchLimits, PluginFetch
from plugin_server.plugins.meta.host import MetaHost
from plugin_server.workers.pool import PoolSettings, WorkerPool
from tests.plugins.meta.test_through_workers import Answer

ORGANIZATION_ID = "ca30f2ec-e9a4-4001-bf27-3ef194086068"
PLUGIN_NAME = "test-maxmind-plugin"
PLUGIN_JSON = {
    "name": PLUGIN_NAME,
    "url": "https://www.npmjs.com/package/posthog-maxmind-plugin",
    "main": "main.py",
    "config": [
        {"key": "localhostIP", "name": "IP to use instead of 127.0.0.1", "type": "string", "default": ""},
        {"key": "maxmindMmdb", "name": "GeoIP MMDB database", "type": "attachment"},
    ],
}
CONFIG_SCHEMA = PLUGIN_JSON["config"]
RESULTS = {"count": 2, "query": "bla", "results": [True, True]}
PASS_THROUGH = "def process_event(event, meta):\n    return event\n"


def zip_archive(source: str, plugin_json: dict[str, Any] | None = None) -> bytes:
    """A zip with ``testplugin/main.py`` and ``testplugin/plugin.json``, like the original's fixture."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("testplugin/main.py", source)
        archive.writestr("testplugin/plugin.json", json.dumps(plugin_json or PLUGIN_JSON))
    return buffer.getvalue()


def spec_team() -> Team:
    """Organization ca30f2ec-… ("TEST ORG", access level 9) and its team 2 ("TEST PROJECT")."""
    organization, _ = Organization.objects.get_or_create(
        id=ORGANIZATION_ID, defaults={"name": "TEST ORG", "plugins_access_level": 9}
    )
    team, _ = Team.objects.get_or_create(
        id=2,
        defaults={
            "organization": organization,
            "name": "TEST PROJECT",
            "anonymize_ips": False,
            "ingested_event": True,
            "api_token": "THIS IS NOT A TOKEN FOR TEAM 2",
        },
    )
    return team


def spec_plugin(source: str = PASS_THROUGH, plugin_id: int = 60, **fields: Any) -> Plugin:
    """Plugin ``plugin_id`` (60 by default) of type custom whose archive holds ``source``."""
    team = spec_team()
    values: dict[str, Any] = {
        "organization": team.organization,
        "plugin_type": Plugin.PluginType.CUSTOM,
        "name": PLUGIN_NAME,
        "url": "https://www.npmjs.com/package/posthog-maxmind-plugin",
        "tag": "0.0.2",
        "config_schema": CONFIG_SCHEMA,
        "archive": zip_archive(source),
        "is_global": False,
    }
    values.update(fields)
    return Plugin.objects.create(id=plugin_id, **values)


def spec_config(plugin: Plugin, config_id: int = 39, attachment: bool = True, **fields: Any) -> PluginConfig:
    """Config ``config_id`` (39) of team 2, enabled, order 0, localhostIP set; attachment 42666 with it."""
    values: dict[str, Any] = {"enabled": True, "order": 0, "config": {"localhostIP": "94.224.212.175"}, "error": None}
    values.update(fields)
    config = PluginConfig.objects.create(id=config_id, team=spec_team(), plugin=plugin, **values)
    if attachment:
        PluginAttachment.objects.create(
            id=42666,
            key="maxmindMmdb",
            content_type="application/octet-stream",
            file_name="test.txt",
            file_size=4,
            contents=b"test",
            plugin_config=config,
            team=config.team,
        )
    return config


def install_spec(source: str, **fields: Any) -> PluginConfig:
    """Plugin 60 running ``source`` and config 39 (with attachment 42666) for team 2."""
    return spec_config(spec_plugin(source), **fields)


def spec_event(name: str = "$test", team_id: int = 2, **fields: Any) -> dict[str, Any]:
    """`{event: "$test", properties: {}, team_id: 2}` plus a distinct id (the pool routes on it)."""
    return {"event": name, "distinct_id": "plugin_test_user_distinct_id_1001", "properties": {}, "team_id": team_id, **fields}


@pytest.fixture
def clean_plugin_cache(redis_client: redis.Redis) -> Iterator[None]:
    """Drop meta.cache keys of plugin 60 (ids repeat across tests, Redis keys outlive the database)."""

    def drop() -> None:
        keys = list(redis_client.scan_iter(match="@plugin/60/*", count=1000))
        if keys:
            redis_client.delete(*keys)

    drop()
    yield
    drop()


class Results(Answer):
    """Answers every GET with {count: 2, query: "bla", results: [true, true]} and remembers the paths."""

    paths: list[str] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        super().do_GET()


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server standing in for the original's mocked fetch: (base url, paths asked for)."""
    paths: list[str] = []
    handler = type("Handler", (Results,), {"paths": paths})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", paths
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def pool(clean_plugin_cache: None) -> Iterator[Callable[..., WorkerPool]]:
    """Start one worker (settings overridable) around a host that may fetch from the loopback server."""
    host = MetaHost(fetch=PluginFetch(FetchLimits(timeout=5, max_response_bytes=1_000_000, allow_private_networks=True)))
    pools: list[WorkerPool] = []

    def start(**overrides: Any) -> WorkerPool:
        values: dict[str, Any] = {"concurrency": 1, "task_timeout": 5.0, "memory_limit_mb": 512}
        values.update(overrides)
        started = WorkerPool(PoolSettings.from_config(**values), host=host)
        started.start()
        pools.append(started)
        return started

    yield start
    for started in pools:
        started.stop()
    host.close()
