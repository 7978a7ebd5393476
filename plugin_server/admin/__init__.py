"""The Django admin of the plugin server (``/admin/``).

What an operator manages: organizations, teams, plugins and plugin configs
(config values as form fields generated from the plugin's schema, the last
error and latest logs on the config's page, enable / disable / reload
actions that reach running servers), plus read-only lists of plugin log
entries and dead letters. django-q2's own sections are hidden: the server
never runs a django-q2 cluster.

Inside PostHog's monolith PostHog may already register some of these
models; those registrations are kept and ours skipped. A model the host
does not have as a Django model (plugin log entries in today's PostHog) is
not registered.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib import admin
from django_q.models import Failure, OrmQ, Schedule, Success

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

# django-q2's sections: the server keeps plugin jobs in django-q2's schedule
# table but never runs a django-q2 cluster, so its queued / successful /
# failed tasks are always empty and its schedule editor would only invite
# edits the job consumer does not expect (pending jobs: docs/jobs.md).
for django_q_model in (Schedule, Success, Failure, OrmQ):
    if admin.site.is_registered(django_q_model):
        admin.site.unregister(django_q_model)

admin.site.site_header = "PostHog plugin server"
# No public site beside the admin: no "View site" link to a page that does not exist.
admin.site.site_url = None
admin.site.site_title = "Plugin server admin"
