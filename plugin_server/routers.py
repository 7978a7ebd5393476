"""Database routers: PostHog's tables when they already exist; the job store's own database.

The router speaks only for the stand-in app (``posthog_standin``): for every
other app, PostHog's own ``posthog`` app included, it has no opinion, so it
never vetoes or alters a migration that is not the plugin server's.
"""

from __future__ import annotations

from typing import Any

from plugin_server.app_settings import app_setting

STANDIN_APP_LABEL = "posthog_standin"
JOB_STORE_APP_LABEL = "django_q"
# The database alias of the job store when JOB_QUEUE_GRAPHILE_URL names one.
JOB_STORE_DB_ALIAS = "plugin_jobs"


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


class JobStoreRouter:
    """With a ``plugin_jobs`` database (JOB_QUEUE_GRAPHILE_URL), django-q2's models — the job
    store — are read, written and migrated there and only there, and nothing else is migrated
    into it. Without one the router has no opinion (the job store is in ``default``)."""

    @staticmethod
    def _alias() -> str | None:
        from django.conf import settings

        return JOB_STORE_DB_ALIAS if JOB_STORE_DB_ALIAS in settings.DATABASES else None

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return self._alias() if model._meta.app_label == JOB_STORE_APP_LABEL else None

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        return self._alias() if model._meta.app_label == JOB_STORE_APP_LABEL else None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        alias = self._alias()
        if alias is None:
            return None
        if app_label == JOB_STORE_APP_LABEL:
            return db == alias
        return False if db == alias else None
