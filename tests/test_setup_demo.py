"""./manage.py setup_demo: demo organization, team, local plugin, plugin config and admin user, idempotently."""

from __future__ import annotations

import ast
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client, override_settings
from django.urls import reverse

from plugin_server.management.commands.setup_demo import DEMO_API_TOKEN, DEMO_FOLDER
from plugin_server.models import Organization, Plugin, PluginConfig, Team
from plugin_server.plugins.loader import load_plugin_code

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

PROJECT = DEMO_FOLDER.parent.parent


def setup_demo() -> str:
    out = StringIO()
    call_command("setup_demo", stdout=out, stderr=StringIO())
    return out.getvalue()


@override_settings(BASE_DIR=str(PROJECT))
def test_setup_demo_creates_everything_and_prints_the_admin_login() -> None:
    """One organization with plugin access, a team with the demo token, the local plugin enabled for it, admin/admin."""
    output = setup_demo()
    team = Team.objects.get(api_token=DEMO_API_TOKEN)
    assert team.organization.plugins_access_level > 0
    plugin = Plugin.objects.get(organization=team.organization)
    assert (plugin.plugin_type, plugin.url) == ("local", "file:plugins/demo")
    assert [field.get("key") for field in plugin.config_schema if "key" in field] == ["greeting", "property_name", "skip_events", "style"]
    config = PluginConfig.objects.get(team=team, plugin=plugin)
    assert config.enabled and config.config == {"greeting": "Hello from the demo plugin"}
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password("admin")
    assert "Admin user: admin / admin" in output
    assert f"api token {DEMO_API_TOKEN}" in output


@override_settings(BASE_DIR=str(PROJECT))
def test_setup_demo_twice_changes_nothing_an_operator_edited() -> None:
    """A second run creates no rows and keeps the config's values and the admin's password."""
    setup_demo()
    PluginConfig.objects.update(config={"greeting": "edited"})
    admin = get_user_model().objects.get(username="admin")
    admin.set_password("changed")
    admin.save()
    counts = (Organization.objects.count(), Team.objects.count(), Plugin.objects.count(), PluginConfig.objects.count())
    output = setup_demo()
    assert (Organization.objects.count(), Team.objects.count(), Plugin.objects.count(), PluginConfig.objects.count()) == counts
    assert PluginConfig.objects.get().config == {"greeting": "edited"}
    assert get_user_model().objects.get(username="admin").check_password("changed")
    assert "password unchanged" in output


def test_the_demo_plugin_is_found_from_any_base_dir(tmp_path: object) -> None:
    """With BASE_DIR elsewhere the plugin url is the folder's absolute path, and the loader reads it."""
    with override_settings(BASE_DIR=str(tmp_path)):
        setup_demo()
        plugin = Plugin.objects.get()
        assert plugin.url == f"file:{DEMO_FOLDER}"
        code = load_plugin_code(plugin)
    assert code.main_filename == "main.py"
    exported = {node.name for node in ast.parse(code.source).body if isinstance(node, ast.FunctionDef)}
    assert {"setup_plugin", "process_event", "run_every_minute"} <= exported


@override_settings(BASE_DIR=str(PROJECT))
def test_the_demo_admin_can_log_in_and_sees_the_demo_config() -> None:
    """admin/admin logs in to the admin; the demo config's page shows the schema's greeting field."""
    setup_demo()
    client = Client()
    assert client.login(username="admin", password="admin")
    config = PluginConfig.objects.get()
    page = client.get(reverse("admin:posthog_standin_pluginconfig_change", args=[config.pk])).content.decode()
    assert 'name="config__greeting"' in page and "Hello from the demo plugin" in page


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_demo_plugin_greets_events_in_a_real_worker() -> None:
    """The demo config runs in a worker process: each event of the demo team gets the greeting property."""
    from plugin_server.workers.pool import PoolSettings, WorkerPool

    with override_settings(BASE_DIR=str(PROJECT)):
        setup_demo()
        team = Team.objects.get(api_token=DEMO_API_TOKEN)
        pool = WorkerPool(PoolSettings.from_config(concurrency=1, task_timeout=5.0, memory_limit_mb=512, grace=1.0))
        pool.start()
        try:
            [event] = pool.process_events([{"event": "$pageview", "distinct_id": "d1", "team_id": team.pk, "properties": {}, "uuid": "u1"}])
        finally:
            pool.stop()
    assert event["properties"]["greeting"] == "Hello from the demo plugin"
    assert PluginConfig.objects.get().error is None
