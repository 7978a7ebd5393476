"""Stand-ins for the PostHog tables the plugin server reads and writes.

Installed only when the plugin server runs on its own. Inside PostHog's
monolith this app is left out and :mod:`plugin_server.models` re-exports
PostHog's own classes instead. The app label is ``posthog`` so that table
names (``posthog_team``, ``posthog_event``, ...) come out exactly as PostHog's.
"""

from django.apps import AppConfig


class PostHogStandInConfig(AppConfig):
    name = "posthog_standin"
    label = "posthog"
    verbose_name = "PostHog tables (stand-ins)"
    default_auto_field = "django.db.models.AutoField"
