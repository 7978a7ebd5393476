"""The app owns its settings: defaults in the app, the project's values win."""

from __future__ import annotations

from typing import Any

import pytest

from plugin_server import app_settings
from plugin_server.app_settings import APP_SETTING_NAMES, app_setting, install_defaults
from plugin_server.config import get_config


def test_the_projects_value_wins(settings: Any) -> None:
    settings.WEB_PORT = 4321
    assert app_setting("WEB_PORT") == 4321
    assert get_config().web_port == 4321


def test_a_setting_the_project_does_not_define_has_the_apps_default(settings: Any) -> None:
    del settings.WEB_PORT
    del settings.PLUGINS_CELERY_QUEUE
    assert app_setting("WEB_PORT") == 3008
    assert get_config().plugins_celery_queue == "posthog-plugins"


def test_install_defaults_adds_only_what_is_missing(settings: Any) -> None:
    settings.TASK_TIMEOUT = 7.0
    del settings.SCHEDULE_LOCK_TTL
    added = install_defaults()
    assert added == ["SCHEDULE_LOCK_TTL"]
    assert settings.SCHEDULE_LOCK_TTL == 60 and settings.TASK_TIMEOUT == 7.0


def test_every_field_of_the_config_view_has_a_default_in_the_app() -> None:
    """A host that defines none of the server's settings can build the typed config."""
    import dataclasses

    from django.conf import global_settings

    from plugin_server.config import _DERIVED, ServerConfig

    for field in dataclasses.fields(ServerConfig):
        name = field.name.upper()
        # Django's own settings (SECRET_KEY, SECURE_*, ...) have Django's defaults in any project.
        if field.name not in _DERIVED and not hasattr(global_settings, name):
            assert name in APP_SETTING_NAMES, f"{name} has no default in plugin_server/app_settings.py"


def test_an_unknown_name_is_refused() -> None:
    with pytest.raises(KeyError):
        app_settings.default("NOT_A_SETTING")
