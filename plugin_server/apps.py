"""App configuration of the plugin server."""

from django.apps import AppConfig


class PluginServerConfig(AppConfig):
    name = "plugin_server"
    verbose_name = "Plugin server"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from plugin_server import checks  # noqa: F401  (registers the system checks)
