"""``./manage.py setup_demo``: a demo organization, team, local plugin, plugin config and admin user.

Idempotent: a second run finds what the first made and changes nothing an
operator may have edited since (the plugin config's values, the admin's
password); only the plugin row is refreshed from ``plugins/demo/plugin.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from plugin_server.app_settings import app_setting
from plugin_server.models import Organization, Plugin, PluginConfig, Team
from plugin_server.plugins.loader import base_folder
from plugin_server.pubsub import publish_reload

DEMO_FOLDER = Path(__file__).resolve().parents[3] / "plugins" / "demo"
DEMO_ORGANIZATION = "Demo organization"
DEMO_TEAM = "Demo team"
DEMO_API_TOKEN = "phc_demo_plugin_server_token"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin"
ADMIN_EMAIL = "admin@example.com"


def demo_plugin_url(base_dir: str) -> str:
    """``file:plugins/demo`` when BASE_DIR is the project folder, else the folder's absolute path."""
    relative = Path(base_folder(base_dir)) / "plugins" / "demo"
    if relative == DEMO_FOLDER:
        return "file:plugins/demo"
    return f"file:{DEMO_FOLDER}"


class Command(BaseCommand):
    help = "Create (once) a demo organization, team, local plugin, plugin config and an admin/admin superuser."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--api-token", default=DEMO_API_TOKEN, help="api token of the demo team (default %(default)s)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            plugin_json = json.loads((DEMO_FOLDER / "plugin.json").read_text())
        except (OSError, ValueError) as error:
            raise CommandError(f"Cannot read the demo plugin at {DEMO_FOLDER}: {error}") from None
        with transaction.atomic():
            organization, _ = Organization.objects.get_or_create(
                name=DEMO_ORGANIZATION, defaults={"plugins_access_level": Organization.PluginsAccessLevel.ROOT}
            )
            team, _ = Team.objects.get_or_create(
                api_token=options["api_token"], defaults={"organization": organization, "name": DEMO_TEAM}
            )
            plugin, _ = Plugin.objects.update_or_create(
                organization=organization,
                name=plugin_json["name"],
                defaults={
                    "plugin_type": Plugin.PluginType.LOCAL,
                    "url": demo_plugin_url(app_setting("BASE_DIR")),
                    "description": plugin_json.get("description", ""),
                    "config_schema": plugin_json.get("config", []),
                    "from_json": True,
                },
            )
            config, config_created = PluginConfig.objects.get_or_create(
                team=team, plugin=plugin, defaults={"enabled": True, "order": 1, "config": {"greeting": "Hello from the demo plugin"}}
            )
            admin_login, admin_created = self._admin_user()
        self.stdout.write(f"Organization: {organization.name} ({organization.pk})")
        self.stdout.write(f"Team: {team.name} (id {team.pk}), api token {team.api_token}")
        self.stdout.write(f"Plugin: {plugin.name} (id {plugin.pk}), {plugin.url}")
        state = "created" if config_created else "already there, left as it is"
        self.stdout.write(f"Plugin config: id {config.pk}, {'enabled' if config.enabled else 'disabled'}, {state}")
        if admin_created:
            self.stdout.write(f"Admin user: {admin_login} / {ADMIN_PASSWORD} (created; change the password)")
        else:
            self.stdout.write(f"Admin user: {admin_login} (already there, password unchanged)")
        self.stdout.write("Admin: ./manage.py runserver --insecure 8000, then http://127.0.0.1:8000/admin/")
        self._publish()

    def _admin_user(self) -> tuple[str, bool]:
        """(the admin's login, whether it was created), whatever the user model.

        Django's ``auth.User`` logs in with a username; PostHog's
        ``posthog.User`` with an email and has no username."""
        users = get_user_model()
        email_field = users.get_email_field_name()
        login_field = users.USERNAME_FIELD
        login = ADMIN_EMAIL if login_field == email_field else ADMIN_USERNAME
        manager: Any = users._default_manager
        if manager.filter(**{login_field: login}).exists():
            return login, False
        fields = {login_field: login, "password": ADMIN_PASSWORD}
        for name in users.REQUIRED_FIELDS:
            fields[name] = ADMIN_EMAIL if name == email_field else ADMIN_USERNAME
        manager.create_superuser(**fields)
        return login, True

    def _publish(self) -> None:
        # A running server picks the demo up at once; none running is fine.
        try:
            publish_reload()
        except (redis.RedisError, OSError) as error:
            self.stderr.write(f"Note: running servers were not told to reload (Redis: {error}).")

