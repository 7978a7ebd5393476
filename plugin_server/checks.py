"""System checks for the plugin server's settings (ids ``plugin_server.E0xx``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, register


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
