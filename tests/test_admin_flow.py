"""The operator's whole path in the admin, against real worker processes and real Redis pub/sub.

Install a source plugin, configure it for a team through its schema form,
let the server run it (a real WorkerPool), change a setting and see the
reload reach the pool, then read the plugin's last error and logs in the admin.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client, override_settings
from django.urls import reverse

from plugin_server.models import Plugin, PluginConfig
from plugin_server.pubsub import ReloadListener
from plugin_server.workers.pool import PoolSettings, WorkerPool
from tests.factories import create_team

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

SOURCE = '''
def setup_plugin(meta):
    print("greeter ready")


def process_event(event, meta):
    if event["event"] == "boom":
        raise ValueError("cannot greet a boom")
    event["properties"]["greeting"] = meta.config["greeting"]
    return event
'''
SCHEMA = [
    {"key": "greeting", "name": "Greeting", "type": "string", "required": True},
    {"key": "token", "name": "Token", "type": "string", "secret": True},
]
INLINE = {f"pluginattachment_set-{name}": value for name, value in (("TOTAL_FORMS", "0"), ("INITIAL_FORMS", "0"), ("MIN_NUM_FORMS", "0"), ("MAX_NUM_FORMS", "1000"))}


@pytest.fixture
def pool(unique_name: str) -> Iterator[WorkerPool]:
    with override_settings(PLUGINS_RELOAD_PUBSUB_CHANNEL=unique_name):
        worker_pool = WorkerPool(PoolSettings.from_config(concurrency=1, task_timeout=5.0, memory_limit_mb=512, grace=1.0))
        worker_pool.start()
        yield worker_pool
        worker_pool.stop()


def greet(pool: WorkerPool, team_id: int, name: str = "$pageview") -> list[dict[str, Any]]:
    return pool.process_events([{"event": name, "distinct_id": "d1", "team_id": team_id, "properties": {}, "uuid": f"u-{name}"}])


def test_install_configure_run_reload_and_read_errors_and_logs(admin_client: Client, pool: WorkerPool) -> None:
    """Everything an operator does in the admin reaches the running pool, and what the plugin did comes back."""
    team = create_team()
    response = admin_client.post(
        reverse("admin:posthog_standin_plugin_add"),
        {"organization": team.organization_id, "name": "greeter", "source": SOURCE, "config_schema": json.dumps(SCHEMA)},
    )
    assert response.status_code == 302
    plugin = Plugin.objects.get(name="greeter")

    response = admin_client.post(
        reverse("admin:posthog_standin_pluginconfig_add"),
        {"team": team.pk, "plugin": plugin.pk, "enabled": "on", "order": "1", "config__greeting": "hello", "config__token": "t0k3n", **INLINE},
    )
    assert response.status_code == 302
    config = PluginConfig.objects.get(team=team, plugin=plugin)

    pool.reload()
    assert greet(pool, team.pk)[0]["properties"]["greeting"] == "hello"

    listener = ReloadListener(pool.reload)
    try:
        deadline = time.monotonic() + 10
        while not listener.wait_subscribed(0):
            assert time.monotonic() < deadline
            listener.poll(timeout=0.1)
        response = admin_client.post(
            reverse("admin:posthog_standin_pluginconfig_change", args=[config.pk]),
            {"enabled": "on", "order": "1", "config__greeting": "bonjour", "config__token": "", **INLINE},
        )
        assert response.status_code == 302
        # The save published a reload: the listener calls pool.reload() once it arrives.
        while listener.poll(timeout=0.2) == 0:
            assert time.monotonic() < deadline, "the admin's reload never reached the listener"
    finally:
        listener.stop()
    assert greet(pool, team.pk)[0]["properties"]["greeting"] == "bonjour"
    assert PluginConfig.objects.get(pk=config.pk).config == {"greeting": "bonjour", "token": "t0k3n"}

    assert [event["event"] for event in greet(pool, team.pk, "boom")] == ["boom"]  # the event goes on unchanged
    page = admin_client.get(reverse("admin:posthog_standin_pluginconfig_change", args=[config.pk])).content.decode()
    assert "errornote" in page and "cannot greet a boom" in page
    assert "greeter ready" in page  # the plugin's own print, in the latest logs
    assert "t0k3n" not in page
    listing = admin_client.get(reverse("admin:posthog_standin_pluginconfig_changelist") + "?has_error=yes").content.decode()
    assert "cannot greet a boom" in listing
