"""System checks for the plugin server's settings (ids ``plugin_server.E0xx`` errors, ``W0xx`` warnings)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register

# settings/base.py's SECRET_KEY when none is set: fine on a laptop, a forgery kit in production.
DEVELOPMENT_SECRET_KEY = "django-insecure-plugin-server-dev-key-change-me"


@register()
def check_kafka_settings(app_configs: Any, **kwargs: Any) -> list[Error]:
    errors: list[Error] = []
    if settings.KAFKA_ENABLED and not settings.KAFKA_HOSTS:
        errors.append(
            Error("KAFKA_ENABLED is set but KAFKA_HOSTS is empty.", hint="Set KAFKA_HOSTS=host:port[,host:port].", id="plugin_server.E001")
        )
    if settings.REDIS_POOL_MIN_SIZE > settings.REDIS_POOL_MAX_SIZE:
        errors.append(Error("REDIS_POOL_MIN_SIZE is larger than REDIS_POOL_MAX_SIZE.", id="plugin_server.E002"))
    return errors


# Models a PostHog may keep in ClickHouse instead (today's does): without
# them the server's only way to store these rows is Kafka.
KAFKA_ONLY_WHEN_MISSING = ("Event", "SessionRecordingEvent", "Element", "ElementGroup", "PluginLogEntry")


@register()
def check_host_models(app_configs: Any, **kwargs: Any) -> list[Error]:
    from plugin_server.models import missing_models, models_package

    missing = [name for name in KAFKA_ONLY_WHEN_MISSING if name in missing_models()]
    if missing and not settings.KAFKA_HOSTS:
        return [
            Error(
                f"{models_package()} has no Django model {', '.join(missing)}: these rows can only go to ClickHouse, through Kafka.",
                hint="Set KAFKA_HOSTS (PostHog's Kafka): plugin log entries are then produced to its plugin_log_entries topic.",
                id="plugin_server.E003",
            )
        ]
    return []


@register(deploy=False)
def check_secret_key(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """The built-in development SECRET_KEY with DEBUG off: a production-like run anyone can forge sessions of."""
    if settings.SECRET_KEY == DEVELOPMENT_SECRET_KEY and not settings.DEBUG:
        return [
            Warning(
                "SECRET_KEY is the built-in development key, and DEBUG is off: admin sessions can be forged.",
                hint='Set SECRET_KEY to a long random value, e.g. python -c "import secrets; print(secrets.token_urlsafe(50))".',
                id="plugin_server.W001",
            )
        ]
    return []
