"""Settings of the plugin server, every one read from the environment.

Names and defaults are the original plugin server's (docs/configuration.md),
so an existing PostHog deployment's environment works unchanged. Settings
that the original did not have are marked "(port)". A malformed value stops
start-up with one line naming the variable (see :mod:`settings.env`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import dj_database_url

from settings.env import env_bool, env_choice, env_float, env_int, env_str, env_url

PROJECT_DIR = Path(__file__).resolve().parent.parent

# --- Django -----------------------------------------------------------------
# The development default starts with "django-insecure-" so that `check --deploy` flags it (security.W009);
# while it is in use with DEBUG off, every command warns (plugin_server.W001).
SECRET_KEY = env_str("SECRET_KEY", "django-insecure-plugin-server-dev-key-change-me") or ""
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = (env_str("ALLOWED_HOSTS", "*") or "*").split(",")
# (port) Serving the admin over HTTPS: what `check --deploy` asks for (docs/configuration.md).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
# "HEADER,value" a TLS-terminating proxy sets, e.g. HTTP_X_FORWARDED_PROTO,https.
_proxy_ssl_header = (env_str("SECURE_PROXY_SSL_HEADER", "") or "").split(",")
SECURE_PROXY_SSL_HEADER = (_proxy_ssl_header[0].strip(), _proxy_ssl_header[1].strip()) if len(_proxy_ssl_header) == 2 else None
ROOT_URLCONF = "plugin_server.urls"
WSGI_APPLICATION = "settings.wsgi.application"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_q",
    "posthog_standin",
    "plugin_server",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Postgres ---------------------------------------------------------------
# The original's default (postgres://localhost:5432/posthog) named no user, so
# libpq connected as the OS user: a role that exists for root on some machines
# and for nobody else. This one is the user and address bin/services provides.
DATABASE_URL = env_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/posthog", ("postgres", "postgresql"))
POSTHOG_DB_NAME = env_str("POSTHOG_DB_NAME", None)
POSTHOG_DB_USER = env_str("POSTHOG_DB_USER", "postgres")
POSTHOG_DB_PASSWORD = env_str("POSTHOG_DB_PASSWORD", "")
POSTHOG_POSTGRES_HOST = env_str("POSTHOG_POSTGRES_HOST", "localhost")
POSTHOG_POSTGRES_PORT = env_int("POSTHOG_POSTGRES_PORT", 5432)
# A plain dict: the Postgres OPTIONS/TEST keys are added below and in settings.test.
_database: dict[str, Any]
if POSTHOG_DB_NAME:
    _database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": POSTHOG_DB_NAME,
        "USER": POSTHOG_DB_USER,
        "PASSWORD": POSTHOG_DB_PASSWORD,
        "HOST": POSTHOG_POSTGRES_HOST,
        "PORT": POSTHOG_POSTGRES_PORT,
    }
else:
    _database = cast(dict[str, Any], dj_database_url.parse(DATABASE_URL))
if os.environ.get("DYNO"):
    _database.setdefault("OPTIONS", {})["sslmode"] = "require"
DATABASES = {"default": _database}
DATABASE_ROUTERS = ["plugin_server.routers.ExistingSchemaRouter"]

# --- The plugin server's own settings ---------------------------------------------
# Read from the environment, with their defaults, by the app itself
# (plugin_server.app_settings), so that a host project that defines none of
# them loads the app; this standalone project takes them all.
from plugin_server.app_settings import (  # noqa: E402
    POSTHOG_MODELS_MODULE as POSTHOG_MODELS_MODULE,
    USE_EXISTING_POSTHOG_SCHEMA as USE_EXISTING_POSTHOG_SCHEMA,
    REDIS_URL as REDIS_URL,
    POSTHOG_REDIS_HOST as POSTHOG_REDIS_HOST,
    POSTHOG_REDIS_PORT as POSTHOG_REDIS_PORT,
    POSTHOG_REDIS_PASSWORD as POSTHOG_REDIS_PASSWORD,
    REDIS_POOL_MIN_SIZE as REDIS_POOL_MIN_SIZE,
    REDIS_POOL_MAX_SIZE as REDIS_POOL_MAX_SIZE,
    CELERY_DEFAULT_QUEUE as CELERY_DEFAULT_QUEUE,
    PLUGINS_CELERY_QUEUE as PLUGINS_CELERY_QUEUE,
    KAFKA_ENABLED as KAFKA_ENABLED,
    KAFKA_HOSTS as KAFKA_HOSTS,
    KAFKA_CLIENT_CERT_B64 as KAFKA_CLIENT_CERT_B64,
    KAFKA_CLIENT_CERT_KEY_B64 as KAFKA_CLIENT_CERT_KEY_B64,
    KAFKA_TRUSTED_CERT_B64 as KAFKA_TRUSTED_CERT_B64,
    KAFKA_CONSUMPTION_TOPIC as KAFKA_CONSUMPTION_TOPIC,
    KAFKA_PRODUCER_MAX_QUEUE_SIZE as KAFKA_PRODUCER_MAX_QUEUE_SIZE,
    KAFKA_MAX_MESSAGE_BATCH_SIZE as KAFKA_MAX_MESSAGE_BATCH_SIZE,
    KAFKA_FLUSH_FREQUENCY_MS as KAFKA_FLUSH_FREQUENCY_MS,
    KAFKA_SESSION_TIMEOUT_MS as KAFKA_SESSION_TIMEOUT_MS,
    KAFKA_PREFIX as KAFKA_PREFIX,
    CLICKHOUSE_HOST as CLICKHOUSE_HOST,
    CLICKHOUSE_DATABASE as CLICKHOUSE_DATABASE,
    CLICKHOUSE_USER as CLICKHOUSE_USER,
    CLICKHOUSE_PASSWORD as CLICKHOUSE_PASSWORD,
    CLICKHOUSE_CA as CLICKHOUSE_CA,
    CLICKHOUSE_SECURE as CLICKHOUSE_SECURE,
    CLICKHOUSE_VERIFY as CLICKHOUSE_VERIFY,
    CLICKHOUSE_PORT as CLICKHOUSE_PORT,
    CLICKHOUSE_HTTP_PORT as CLICKHOUSE_HTTP_PORT,
    CLICKHOUSE_WRITER_GROUP_ID as CLICKHOUSE_WRITER_GROUP_ID,
    CLICKHOUSE_WRITER_BATCH_SIZE as CLICKHOUSE_WRITER_BATCH_SIZE,
    CLICKHOUSE_WRITER_BATCH_MS as CLICKHOUSE_WRITER_BATCH_MS,
    CLICKHOUSE_WRITER_DEAD_LETTER_TOPIC as CLICKHOUSE_WRITER_DEAD_LETTER_TOPIC,
    BASE_DIR as BASE_DIR,
    PLUGINS_RELOAD_PUBSUB_CHANNEL as PLUGINS_RELOAD_PUBSUB_CHANNEL,
    WORKER_CONCURRENCY as WORKER_CONCURRENCY,
    TASKS_PER_WORKER as TASKS_PER_WORKER,
    TASK_TIMEOUT as TASK_TIMEOUT,
    WORKER_MEMORY_LIMIT_MB as WORKER_MEMORY_LIMIT_MB,
    WORKER_MAX_TASKS as WORKER_MAX_TASKS,
    TEAM_WORKERS_MAX as TEAM_WORKERS_MAX,
    WORKER_LOSSES_TO_DISABLE as WORKER_LOSSES_TO_DISABLE,
    DISABLE_WEB as DISABLE_WEB,
    WEB_PORT as WEB_PORT,
    WEB_HOSTNAME as WEB_HOSTNAME,
    LOG_LEVEL as LOG_LEVEL,
    SENTRY_DSN as SENTRY_DSN,
    STATSD_HOST as STATSD_HOST,
    STATSD_PORT as STATSD_PORT,
    STATSD_PREFIX as STATSD_PREFIX,
    SCHEDULE_LOCK_TTL as SCHEDULE_LOCK_TTL,
    JOB_QUEUES as JOB_QUEUES,
    JOB_QUEUE_GRAPHILE_URL as JOB_QUEUE_GRAPHILE_URL,
    JOB_QUEUE_GRAPHILE_SCHEMA as JOB_QUEUE_GRAPHILE_SCHEMA,
    JOB_QUEUE_GRAPHILE_PREPARED_STATEMENTS as JOB_QUEUE_GRAPHILE_PREPARED_STATEMENTS,
    CRASH_IF_NO_PERSISTENT_JOB_QUEUE as CRASH_IF_NO_PERSISTENT_JOB_QUEUE,
    STALENESS_RESTART_SECONDS as STALENESS_RESTART_SECONDS,
    PLUGIN_SERVER_MODE as PLUGIN_SERVER_MODE,
    SCHEDULE_TIME_SCALE as SCHEDULE_TIME_SCALE,
    JOB_MAX_ATTEMPTS as JOB_MAX_ATTEMPTS,
    JOB_RETRY_BASE_SECONDS as JOB_RETRY_BASE_SECONDS,
    JOB_POLL_INTERVAL as JOB_POLL_INTERVAL,
    DISABLE_MMDB as DISABLE_MMDB,
    INTERNAL_MMDB_SERVER_PORT as INTERNAL_MMDB_SERVER_PORT,
    DISTINCT_ID_LRU_SIZE as DISTINCT_ID_LRU_SIZE,
    PLUGIN_SERVER_IDLE as PLUGIN_SERVER_IDLE,
    EXPORT_BACKLOG_EVENTS as EXPORT_BACKLOG_EVENTS,
    EXPORT_BACKLOG_BYTES as EXPORT_BACKLOG_BYTES,
    EXPORT_LANE_BYTES as EXPORT_LANE_BYTES,
    EXPORT_CONCURRENCY as EXPORT_CONCURRENCY,
    EXPORT_CONFIG_CONCURRENCY as EXPORT_CONFIG_CONCURRENCY,
    EXPORT_TIMEOUTS_TO_SLOW as EXPORT_TIMEOUTS_TO_SLOW,
    EXPORT_TIMEOUTS_TO_DISABLE as EXPORT_TIMEOUTS_TO_DISABLE,
    EXPORT_JOURNAL as EXPORT_JOURNAL,
    EXPORT_ORPHAN_SECONDS as EXPORT_ORPHAN_SECONDS,
    EXPORT_DRAIN_SECONDS as EXPORT_DRAIN_SECONDS,
    INGESTION_BATCH_SIZE as INGESTION_BATCH_SIZE,
    INGESTION_POLL_TIMEOUT as INGESTION_POLL_TIMEOUT,
    INGESTION_MAX_MESSAGE_BYTES as INGESTION_MAX_MESSAGE_BYTES,
    INGESTION_RETRY_ATTEMPTS as INGESTION_RETRY_ATTEMPTS,
    INGESTION_RETRY_BACKOFF as INGESTION_RETRY_BACKOFF,
    INGESTION_RETRY_BACKOFF_MAX as INGESTION_RETRY_BACKOFF_MAX,
    CELERY_CONSUMER_HEARTBEAT_TTL as CELERY_CONSUMER_HEARTBEAT_TTL,
    CELERY_GLOBAL_KEYPREFIX as CELERY_GLOBAL_KEYPREFIX,
    POISON_MAX_ATTEMPTS as POISON_MAX_ATTEMPTS,
    MAX_EVENT_DEPTH as MAX_EVENT_DEPTH,
    SHUTDOWN_TIMEOUT as SHUTDOWN_TIMEOUT,
    CONN_MAX_AGE as CONN_MAX_AGE,
    MAX_EVENT_SIZE_BYTES as MAX_EVENT_SIZE_BYTES,
    CAPTURE_ENABLED as CAPTURE_ENABLED,
    CAPTURE_MAX_BODY_BYTES as CAPTURE_MAX_BODY_BYTES,
    CAPTURE_TRUSTED_PROXIES as CAPTURE_TRUSTED_PROXIES,
    CAPTURE_TOKEN_CACHE_TTL as CAPTURE_TOKEN_CACHE_TTL,
    CAPTURE_QUEUE_TIMEOUT as CAPTURE_QUEUE_TIMEOUT,
    Q_CLUSTER as Q_CLUSTER,
    PLUGIN_FETCH_TIMEOUT as PLUGIN_FETCH_TIMEOUT,
    PLUGIN_FETCH_MAX_RESPONSE_BYTES as PLUGIN_FETCH_MAX_RESPONSE_BYTES,
    PLUGIN_FETCH_ALLOW_PRIVATE_NETWORKS as PLUGIN_FETCH_ALLOW_PRIVATE_NETWORKS,
    MMDB_PATH as MMDB_PATH,
    MMDB_DOWNLOAD_URL as MMDB_DOWNLOAD_URL,
)

DATABASES["default"]["CONN_MAX_AGE"] = CONN_MAX_AGE
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

# JOB_QUEUE_GRAPHILE_URL: the job store (django-q2's tables) in a Postgres database of its own,
# under the alias JobStoreRouter sends django_q's models and migrations to.
from plugin_server.routers import JOB_STORE_DB_ALIAS  # noqa: E402

if JOB_QUEUE_GRAPHILE_URL:
    DATABASES[JOB_STORE_DB_ALIAS] = {
        **cast(dict[str, Any], dj_database_url.parse(JOB_QUEUE_GRAPHILE_URL)),
        "CONN_MAX_AGE": CONN_MAX_AGE,
        "CONN_HEALTH_CHECKS": True,
    }
    Q_CLUSTER = {**Q_CLUSTER, "orm": JOB_STORE_DB_ALIAS}
DATABASE_ROUTERS.append("plugin_server.routers.JobStoreRouter")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"structured": {"()": "plugin_server.logs.StructuredFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
    "root": {"handlers": ["console"], "level": {"log": "INFO", "warn": "WARNING", "none": "CRITICAL"}.get(LOG_LEVEL, LOG_LEVEL.upper())},
}
