"""Keeps migrations off PostHog's own tables when they already exist."""

from __future__ import annotations

from typing import Any

from django.conf import settings

POSTHOG_APP_LABEL = "posthog"


class ExistingSchemaRouter:
    """With ``USE_EXISTING_POSTHOG_SCHEMA`` on, ``migrate`` neither creates nor
    alters any ``posthog_*`` table; it only records the stand-in migrations as
    applied. The plugin server's own tables (dead letters, jobs) are still
    created, so the server can run against a live PostHog database."""

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        if app_label == POSTHOG_APP_LABEL and settings.USE_EXISTING_POSTHOG_SCHEMA:
            return False
        return None
