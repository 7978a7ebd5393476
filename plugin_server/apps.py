"""App configuration of the plugin server."""

from typing import Any

from django.apps import AppConfig


class PluginServerConfig(AppConfig):
    name = "plugin_server"
    verbose_name = "Plugin server"
    default_auto_field = "django.db.models.BigAutoField"

    def __init__(self, app_name: str, app_module: Any) -> None:
        super().__init__(app_name, app_module)
        # Before any app's models or ready(): a host project that defines
        # none of the server's settings gets the app's defaults (its own win).
        from plugin_server.app_settings import install_defaults

        install_defaults()

    def ready(self) -> None:
        from plugin_server import checks  # noqa: F401  (registers the system checks)
