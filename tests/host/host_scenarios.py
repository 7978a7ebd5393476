"""Steps the host tests run inside the host project (``manage.py shell -c``); each prints one JSON line."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

SOURCE = "def process_event(event, meta):\n    event['properties'][{key!r}] = 'ran'\n    return event\n"


def _form_errors(page: str) -> list[str]:
    """The error lists of an admin form page (an empty list when it saved)."""
    import re

    return re.findall(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', page, re.DOTALL)


def _print(value: Any) -> None:
    print(json.dumps(value, default=str))


def resolved_models() -> None:
    """Where each model came from, which are missing, and a few settings as the app sees them."""
    from plugin_server import models
    from plugin_server.app_settings import app_setting

    _print(
        {
            "modules": {name: getattr(models, name).__module__ for name in models.MODEL_MODULES if models.has_model(name)},
            "missing": sorted(models.missing_models()),
            "persons_alias": models.persons_db_alias(),
            "settings": {name: app_setting(name) for name in ("WEB_PORT", "PLUGINS_CELERY_QUEUE", "TASK_TIMEOUT")},
            "on_django_settings": hasattr(settings, "SCHEDULE_LOCK_TTL"),
            "user_model": settings.AUTH_USER_MODEL,
        }
    )


def admin_pages() -> None:
    """Log in as the demo admin (email login) and fetch the admin's pages; their status codes."""
    from django.urls import reverse

    from plugin_server.models import Organization, Plugin, PluginConfig, Team

    client = Client()
    logged_in = client.login(username="admin@example.com", password="admin")
    plugin = Plugin.objects.order_by("id").first()
    config = PluginConfig.objects.order_by("id").first()
    assert plugin is not None and config is not None
    pages = {"index": reverse("admin:index")}
    for model in (Organization, Team, Plugin, PluginConfig, get_user_model()):
        meta = model._meta
        pages[f"{meta.model_name}_changelist"] = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
    for model, row in ((Plugin, plugin), (PluginConfig, config)):
        meta = model._meta
        pages[f"{meta.model_name}_add"] = reverse(f"admin:{meta.app_label}_{meta.model_name}_add")
        pages[f"{meta.model_name}_change"] = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[row.pk])
    statuses = {name: client.get(url).status_code for name, url in pages.items()}
    config_page = client.get(pages["pluginconfig_change"]).content.decode()
    _print({"logged_in": logged_in, "statuses": statuses, "config_page_has_greeting": "greeting" in config_page})


def add_edge_configs() -> None:
    """Configs of today's PostHog that must not run as they are: filtered, deleted, inline."""
    from plugin_server.models import Plugin, PluginConfig, Team

    team = Team.objects.get(api_token="phc_demo_plugin_server_token")
    organization = team.organization
    made = {}
    for key, extra_config, extra_plugin in (
        ("filtered", {"filters": {"events": [{"id": "$pageview"}]}}, {}),
        ("deleted", {"deleted": True}, {}),
        ("inline", {}, {"plugin_type": "inline", "url": "inline:semver-flattener"}),
    ):
        plugin = Plugin.objects.create(
            organization=organization, name=key, plugin_type=extra_plugin.get("plugin_type", "source"),
            url=extra_plugin.get("url"), source=SOURCE.format(key=key),
        )
        config = PluginConfig.objects.create(team=team, plugin=plugin, enabled=True, order=10, **extra_config)
        made[key] = config.pk
    _print(made)


def config_errors() -> None:
    from plugin_server.models import PluginConfig

    _print({str(config.pk): config.error for config in PluginConfig.objects.order_by("id")})


def admin_adds_a_plugin_and_a_config() -> None:
    """Through the admin's forms: a source plugin, then a config of it for the demo team."""
    from django.urls import reverse

    from plugin_server.models import Plugin, PluginConfig, Team

    client = Client()
    assert client.login(username="admin@example.com", password="admin")
    team = Team.objects.get(api_token="phc_demo_plugin_server_token")
    plugin_meta, config_meta = Plugin._meta, PluginConfig._meta
    added = client.post(
        reverse(f"admin:{plugin_meta.app_label}_{plugin_meta.model_name}_add"),
        {
            "organization": str(team.organization_id), "name": "added in the admin", "description": "", "plugin_type": "source",
            "url": "", "tag": "", "source": "def process_event(event, meta):\n    return event\n", "config_schema": "[]",
        },
    )
    plugin = Plugin.objects.filter(name="added in the admin").first()
    configured = client.post(
        reverse(f"admin:{config_meta.app_label}_{config_meta.model_name}_add"),
        {
            "team": str(team.pk), "plugin": str(plugin.pk if plugin else ""), "enabled": "on", "order": "5", "config": "{}",
            # The attachments inline's management form (no attachment).
            "pluginattachment_set-TOTAL_FORMS": "0", "pluginattachment_set-INITIAL_FORMS": "0",
        },
    )
    config = PluginConfig.objects.filter(plugin=plugin).first() if plugin else None
    _print(
        {
            "plugin_status": added.status_code,
            "config_status": configured.status_code,
            "config": None if config is None else {"enabled": config.enabled, "order": config.order, "deleted": config.deleted},
            "errors": _form_errors(added.content.decode()) + _form_errors(configured.content.decode()),
        }
    )
