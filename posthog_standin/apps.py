"""Stand-ins for the PostHog tables the plugin server reads and writes.

Installed only when the plugin server runs on its own. Inside PostHog's
monolith this app is left out and :mod:`plugin_server.models` takes PostHog's own
classes instead. The app has a label of its own (``posthog_standin``, never
PostHog's ``posthog``), so that nothing here can be mistaken for PostHog's
app: its migrations, admin URLs and content types are its own. Each model
names its table (``posthog_team``, ``posthog_event``, ...) exactly as
PostHog's.
"""

from django.apps import AppConfig


class PostHogStandInConfig(AppConfig):
    name = "posthog_standin"
    verbose_name = "PostHog tables (stand-ins)"
    default_auto_field = "django.db.models.AutoField"
