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
            Error("You must set KAFKA_HOSTS to process events from Kafka!", hint="Set KAFKA_HOSTS=host:port[,host:port].", id="plugin_server.E001")
        )
    if settings.REDIS_POOL_MIN_SIZE > settings.REDIS_POOL_MAX_SIZE:
        errors.append(Error("REDIS_POOL_MIN_SIZE is larger than REDIS_POOL_MAX_SIZE.", id="plugin_server.E002"))
    return errors


# Rows a PostHog may keep in ClickHouse only (today's does): without their
# model the server produces them to Kafka (plugin_log_entries,
# clickhouse_session_recording_events), so it needs PostHog's Kafka.
KAFKA_WHEN_MISSING = ("SessionRecordingEvent", "PluginLogEntry")
# Without these the events themselves can only take the Kafka pipeline.
EVENT_MODELS = ("Event", "Element", "ElementGroup")


@register()
def check_host_models(app_configs: Any, **kwargs: Any) -> list[Error]:
    from plugin_server.models import missing_models, models_package

    errors: list[Error] = []
    missing = [name for name in KAFKA_WHEN_MISSING if name in missing_models()]
    if missing and not settings.KAFKA_HOSTS:
        errors.append(
            Error(
                f"{models_package()} has no Django model {', '.join(missing)}: these rows can only go to ClickHouse, through Kafka.",
                hint="Set KAFKA_HOSTS (PostHog's Kafka): plugin log entries and session recordings are then produced to it.",
                id="plugin_server.E003",
            )
        )
    missing = [name for name in EVENT_MODELS if name in missing_models()]
    if missing and not settings.KAFKA_ENABLED:
        errors.append(
            Error(
                f"{models_package()} has no Django model {', '.join(missing)}: events cannot be stored in Postgres here.",
                hint="Use the Kafka pipeline (KAFKA_ENABLED=true, KAFKA_HOSTS).",
                id="plugin_server.E004",
            )
        )
    return errors


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


@register()
def check_django_q_order(app_configs: Any, **kwargs: Any) -> list[Warning]:
    """django-q2 reads Q_CLUSTER when its app is loaded: the app's default must be in place by then."""
    from django.apps import apps

    from plugin_server.app_settings import DEFAULTED

    labels = [config.label for config in apps.get_app_configs()]
    if "Q_CLUSTER" in DEFAULTED and "django_q" in labels and labels.index("django_q") < labels.index("plugin_server"):
        return [
            Warning(
                "django_q comes before plugin_server in INSTALLED_APPS and the project defines no Q_CLUSTER:"
                " django-q2 has read its own defaults, not the plugin server's.",
                hint="List plugin_server before django_q, or define Q_CLUSTER.",
                id="plugin_server.W002",
            )
        ]
    return []


@register()
def check_capture_settings(app_configs: Any, **kwargs: Any) -> list[Error | Warning]:
    """The capture endpoint's settings (docs/capture.md): proxies that parse, a switch that does something."""
    import ipaddress

    from plugin_server.app_settings import app_setting

    problems: list[Error | Warning] = []
    for entry in (app_setting("CAPTURE_TRUSTED_PROXIES") or "").split(","):
        if not entry.strip():
            continue
        try:
            ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            problems.append(
                Error(
                    f"CAPTURE_TRUSTED_PROXIES: {entry.strip()!r} is not an address or a network.",
                    hint="Comma-separated addresses or CIDR networks, e.g. 10.0.0.0/8,192.168.1.7.",
                    id="plugin_server.E005",
                )
            )
    if app_setting("CAPTURE_ENABLED") and app_setting("DISABLE_WEB"):
        problems.append(
            Warning(
                "CAPTURE_ENABLED is true but DISABLE_WEB is too: run_plugin_server serves no web, so no capture endpoint.",
                hint="Set DISABLE_WEB=false (the capture API is then on WEB_HOSTNAME:WEB_PORT), or serve settings.wsgi with a WSGI server.",
                id="plugin_server.W003",
            )
        )
    return problems
