"""A frozen, typed view of the settings the plugin server uses.

App code calls :func:`get_config` instead of reading ``django.conf.settings``:
the view is built on first use (never at import time, so importing a module
does not freeze the settings of the moment) and dropped whenever Django's
``setting_changed`` signal fires, so ``override_settings`` in tests is seen
by the next call.

Every field is the setting of the same name in upper case
(docs/configuration.md), some resolved for use: ``database_url`` is the
database actually connected to (``POSTHOG_DB_*`` win over ``DATABASE_URL``),
``redis_url`` the Redis actually used (``POSTHOG_REDIS_HOST`` wins over
``REDIS_URL``), ``worker_concurrency`` a real count (0 means one per core).
Fields whose metadata says ``secret`` are masked by
:meth:`ServerConfig.masked_items`. A new setting gets a field here and a row
in docs/configuration.md (tests/test_settings.py checks both).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from plugin_server.app_settings import app_setting

MASK = "********"

# Field metadata: "secret" masks the whole value, "url" masks a password in it.
_SECRET: dict[str, Any] = {"secret": "value"}
_URL: dict[str, Any] = {"secret": "url"}


@dataclasses.dataclass(frozen=True, slots=True)
class ServerConfig:
    """The effective configuration of one plugin server process."""

    # Postgres and Redis
    database_url: str = dataclasses.field(metadata=_URL)
    redis_url: str = dataclasses.field(metadata=_URL)
    redis_pool_min_size: int
    redis_pool_max_size: int
    use_existing_posthog_schema: bool
    # Celery queues
    celery_default_queue: str
    plugins_celery_queue: str
    # Kafka
    kafka_enabled: bool
    kafka_hosts: str | None
    kafka_client_cert_b64: str | None = dataclasses.field(metadata=_SECRET)
    kafka_client_cert_key_b64: str | None = dataclasses.field(metadata=_SECRET)
    kafka_trusted_cert_b64: str | None = dataclasses.field(metadata=_SECRET)
    kafka_consumption_topic: str | None
    kafka_producer_max_queue_size: int
    kafka_max_message_batch_size: int
    kafka_flush_frequency_ms: int
    kafka_session_timeout_ms: int
    kafka_rebalance_timeout_ms: int
    kafka_prefix: str
    kafka_consumer_group: str
    # ClickHouse
    clickhouse_host: str | None
    clickhouse_database: str | None
    clickhouse_user: str | None
    clickhouse_password: str | None = dataclasses.field(metadata=_SECRET)
    clickhouse_ca: str | None
    clickhouse_secure: bool
    clickhouse_verify: bool
    clickhouse_port: int
    clickhouse_http_port: int
    clickhouse_writer_group_id: str
    clickhouse_writer_batch_size: int
    clickhouse_writer_batch_ms: int
    clickhouse_writer_dead_letter_topic: str
    # Plugins and workers
    base_dir: str
    plugins_reload_pubsub_channel: str
    worker_concurrency: int
    tasks_per_worker: int
    task_timeout: float
    worker_memory_limit_mb: int
    js_plugin_memory_limit_mb: int
    js_plugin_meta_calls_max: int
    worker_max_tasks: int
    team_workers_max: int
    worker_losses_to_disable: int
    # Web, logs, monitoring
    disable_web: bool
    web_port: int
    web_hostname: str
    log_level: str
    sentry_dsn: str | None = dataclasses.field(metadata=_SECRET)
    statsd_host: str | None
    statsd_port: int
    statsd_prefix: str | None
    # Scheduler and jobs
    schedule_lock_ttl: int
    job_queues: tuple[str, ...]
    job_queue_graphile_url: str | None = dataclasses.field(metadata=_URL)
    job_queue_graphile_schema: str | None
    job_queue_graphile_prepared_statements: bool
    crash_if_no_persistent_job_queue: bool
    staleness_restart_seconds: int
    plugin_server_mode: str
    jobs_workers: int
    schedule_time_scale: float
    job_max_attempts: int
    job_retry_base_seconds: float
    job_poll_interval: float
    # Ingestion
    disable_mmdb: bool
    internal_mmdb_server_port: int
    mmdb_path: str
    mmdb_download_url: str
    # Plugin meta API
    plugin_fetch_timeout: float
    plugin_fetch_max_response_bytes: int
    plugin_fetch_allow_private_networks: bool
    distinct_id_lru_size: int
    plugin_server_idle: bool
    # Export lane
    export_backlog_events: int
    export_backlog_bytes: int
    export_lane_bytes: int
    export_concurrency: int
    export_config_concurrency: int
    export_timeouts_to_slow: int
    export_timeouts_to_disable: int
    export_journal: bool
    export_orphan_seconds: float
    export_drain_seconds: float
    ingestion_processes: int
    ingestion_batch_size: int
    ingestion_poll_timeout: float
    ingestion_max_message_bytes: int
    ingestion_retry_attempts: int
    ingestion_retry_backoff: float
    ingestion_retry_backoff_max: float
    celery_consumer_heartbeat_ttl: int
    celery_global_keyprefix: str
    poison_max_attempts: int
    max_event_depth: int
    shutdown_timeout: float
    conn_max_age: int
    max_event_size_bytes: int
    # Capture endpoint
    capture_enabled: bool
    capture_max_body_bytes: int
    capture_trusted_proxies: tuple[str, ...]
    capture_token_cache_ttl: float
    capture_queue_timeout: float
    # Django
    secret_key: str = dataclasses.field(metadata=_SECRET)
    debug: bool
    allowed_hosts: tuple[str, ...]
    secure_ssl_redirect: bool
    secure_hsts_seconds: int
    secure_hsts_include_subdomains: bool
    secure_hsts_preload: bool
    session_cookie_secure: bool
    csrf_cookie_secure: bool
    secure_proxy_ssl_header: str

    @classmethod
    def from_settings(cls) -> ServerConfig:
        """Read every field from the setting of the same name, resolving the derived ones."""
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            derive = _DERIVED.get(field.name)
            values[field.name] = derive() if derive else app_setting(field.name.upper())
        return cls(**values)

    def masked_items(self) -> Iterator[tuple[str, Any]]:
        """(SETTING_NAME, value) pairs in field order, with secrets masked."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = field.metadata.get("secret")
            if kind == "value" and value:
                value = MASK
            elif kind == "url" and value:
                value = mask_url(value)
            yield field.name.upper(), value

    def __repr__(self) -> str:
        # Masked, so that logging the config never leaks a password.
        return f"ServerConfig({', '.join(f'{name.lower()}={value!r}' for name, value in self.masked_items())})"


def mask_url(url: str) -> str:
    """The URL with its password (and nothing else) replaced by the mask."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = quote(parts.username or "", safe="")
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal needs its brackets back
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:{MASK}@{host}{port}", parts.path, parts.query, parts.fragment))


def _database_url() -> str:
    database = settings.DATABASES["default"]
    user = quote(str(database.get("USER") or ""), safe="")
    password = quote(str(database.get("PASSWORD") or ""), safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{database['PORT']}" if database.get("PORT") else ""
    return f"postgres://{credentials}{database.get('HOST') or 'localhost'}{port}/{database.get('NAME') or ''}"


def _redis_url() -> str:
    # Imported here: redis_client imports redis, which the config module
    # should not force on every importer.
    from plugin_server.redis_client import redis_url

    return redis_url()


def _worker_concurrency() -> int:
    configured = int(app_setting("WORKER_CONCURRENCY"))
    return configured if configured > 0 else (os.cpu_count() or 1)


def _ingestion_processes() -> int:
    configured = int(app_setting("INGESTION_PROCESSES"))
    return configured if configured > 0 else (os.cpu_count() or 1)


def _job_queues() -> tuple[str, ...]:
    return tuple(name.strip() for name in (app_setting("JOB_QUEUES") or "").split(",") if name.strip())


_DERIVED: dict[str, Callable[[], Any]] = {
    "database_url": _database_url,
    "redis_url": _redis_url,
    "worker_concurrency": _worker_concurrency,
    "job_queues": _job_queues,
    "ingestion_processes": _ingestion_processes,
    "jobs_workers": lambda: int(str(app_setting("Q_CLUSTER")["workers"])),
    "allowed_hosts": lambda: tuple(settings.ALLOWED_HOSTS),
    "secure_proxy_ssl_header": lambda: ",".join(settings.SECURE_PROXY_SSL_HEADER or ()),
    "capture_trusted_proxies": lambda: tuple(
        item.strip() for item in (app_setting("CAPTURE_TRUSTED_PROXIES") or "").split(",") if item.strip()
    ),
}

_lock = threading.Lock()
_config: ServerConfig | None = None


def get_config() -> ServerConfig:
    """The configuration of this process, built on first use."""
    global _config
    config = _config
    if config is None:
        with _lock:
            if _config is None:
                _config = ServerConfig.from_settings()
            config = _config
    return config


@receiver(setting_changed)
def _drop_config(**kwargs: Any) -> None:
    # Any setting may feed a derived field, so any change drops the view.
    global _config
    with _lock:
        _config = None
