"""Fixtures of the meta tests: a plugin config's context and a host, on real services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.host import MetaHost
from plugin_server.redis_client import get_redis
from tests.factories import create_plugin_config


def context_of(config: object) -> PluginContext:
    """The context the pool would build for a PluginConfig row."""
    return PluginContext(
        plugin_config_id=config.id,  # type: ignore[attr-defined]
        plugin_id=config.plugin_id,  # type: ignore[attr-defined]
        team_id=config.team_id,  # type: ignore[attr-defined]
        plugin_name=config.plugin.name,  # type: ignore[attr-defined]
    )


def _drop_plugin_keys(client: redis.Redis, plugin_id: int) -> None:
    # Database ids restart with each test database, Redis keys do not: start clean.
    keys = list(client.scan_iter(match=f"@plugin/{plugin_id}/*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def plugin_config(db: None) -> object:
    return create_plugin_config()


@pytest.fixture
def ctx(plugin_config: object) -> Iterator[PluginContext]:
    context = context_of(plugin_config)
    client = get_redis()
    _drop_plugin_keys(client, context.plugin_id)
    yield context
    _drop_plugin_keys(client, context.plugin_id)


@pytest.fixture
def host() -> Iterator[MetaHost]:
    meta_host = MetaHost()
    yield meta_host
    meta_host.close()
