"""The Django admin of the plugin server (``/admin/``).

What an operator manages: organizations, teams, plugins and plugin configs
(config values as form fields generated from the plugin's schema, the last
error and latest logs on the config's page, enable / disable / reload
actions that reach running servers), plus read-only lists of plugin log
entries and dead letters.

Inside PostHog's monolith PostHog may already register some of these
models; those registrations are kept and ours skipped. A model the host
does not have as a Django model (plugin log entries in today's PostHog) is
not registered.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin

from plugin_server.admin.plugins import PluginAdmin, PluginConfigAdmin
from plugin_server.admin.records import DeadLetterAdmin, OrganizationAdmin, PluginLogEntryAdmin, TeamAdmin
from plugin_server.models import DeadLetter, Organization, Plugin, PluginConfig, PluginLogEntry, Team

logger = logging.getLogger(__name__)

REGISTRATIONS: tuple[tuple[Any, type[admin.ModelAdmin]], ...] = (  # type: ignore[type-arg]
    (Organization, OrganizationAdmin),
    (Team, TeamAdmin),
    (Plugin, PluginAdmin),
    (PluginConfig, PluginConfigAdmin),
    (PluginLogEntry, PluginLogEntryAdmin),
    (DeadLetter, DeadLetterAdmin),
)

for model, model_admin in REGISTRATIONS:
    if model is None:
        # Not a Django model in this PostHog (today's keeps log entries in ClickHouse).
        continue
    if admin.site.is_registered(model):
        logger.info("%s is already in the admin; keeping that registration", model.__name__)
    else:
        admin.site.register(model, model_admin)

admin.site.site_header = "PostHog plugin server"
admin.site.site_title = "Plugin server admin"
