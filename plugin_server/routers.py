"""Keeps migrations off PostHog's tables when they already exist.

The router speaks only for the stand-in app (``posthog_standin``): for every
other app, PostHog's own ``posthog`` app included, it has no opinion, so it
never vetoes or alters a migration that is not the plugin server's.
"""

from __future__ import annotations

from typing import Any

from plugin_server.app_settings import app_setting

STANDIN_APP_LABEL = "posthog_standin"


class ExistingSchemaRouter:
    """With ``USE_EXISTING_POSTHOG_SCHEMA`` on (a separate plugin server
    process on an existing PostHog database), ``migrate`` neither creates nor
    alters the stand-ins' ``posthog_*`` tables; it only records the stand-in
    migrations as applied. The plugin server's own tables (dead letters,
    jobs) are still created."""

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        if app_label == STANDIN_APP_LABEL and app_setting("USE_EXISTING_POSTHOG_SCHEMA"):
            return False
        return None
