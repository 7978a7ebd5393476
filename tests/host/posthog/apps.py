from django.apps import AppConfig


class PostHogConfig(AppConfig):
    name = "posthog"
    label = "posthog"
    default_auto_field = "django.db.models.AutoField"
