"""The plugin server's settings, with their defaults, owned by the app.

Every setting the app reads is defined here, read from the environment with
the original plugin server's name and default, so
that an existing PostHog deployment's environment works unchanged. Settings
that the original did not have are marked "(port)". A malformed value stops
start-up with one line naming the variable (see :mod:`plugin_server.env`).

How they reach ``django.conf.settings``:

- the standalone project (``settings/base.py``) star-imports this module;
- a host project (PostHog's monolith) need define none of them: when the
  app is set up, :func:`install_defaults` adds every one the host did not
  define. The host's own values win. List ``plugin_server`` before
  ``django_q`` in ``INSTALLED_APPS`` so that django-q2 sees ``Q_CLUSTER``.

Read them through :func:`app_setting` (or the typed view,
:func:`plugin_server.config.get_config`), never with a bare getattr.
"""

from __future__ import annotations

from typing import Any

from plugin_server.env import env_bool, env_choice, env_float, env_int, env_str, env_url

# Switches the test defaults (a few settings have other defaults in tests).
TESTING = env_bool("PLUGIN_SERVER_TESTING", False)

# Where the models of PostHog's tables come from: the stand-ins (on its own)
# or PostHog's models package ("posthog.models", inside the monolith). None:
# the stand-ins when the app ``posthog_standin`` is installed, else PostHog's.
POSTHOG_MODELS_MODULE: str | None = None

# --- Plugin server on an existing PostHog database -------------------------------
# (port) true: the PostHog tables already exist (an existing PostHog database);
# migrations then never create or alter them (see plugin_server.routers).
USE_EXISTING_POSTHOG_SCHEMA = env_bool("USE_EXISTING_POSTHOG_SCHEMA", False)

# --- Redis ------------------------------------------------------------------
REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1", ("redis", "rediss", "unix"))
POSTHOG_REDIS_HOST = env_str("POSTHOG_REDIS_HOST", "")
POSTHOG_REDIS_PORT = env_int("POSTHOG_REDIS_PORT", 6379)
POSTHOG_REDIS_PASSWORD = env_str("POSTHOG_REDIS_PASSWORD", "")
REDIS_POOL_MIN_SIZE = env_int("REDIS_POOL_MIN_SIZE", 1, minimum=1)
REDIS_POOL_MAX_SIZE = env_int("REDIS_POOL_MAX_SIZE", 3, minimum=1)

# --- Celery queues ------------------------------------------------------------
CELERY_DEFAULT_QUEUE = env_str("CELERY_DEFAULT_QUEUE", "celery") or "celery"
PLUGINS_CELERY_QUEUE = env_str("PLUGINS_CELERY_QUEUE", "posthog-plugins") or "posthog-plugins"

# --- Kafka ------------------------------------------------------------------
KAFKA_ENABLED = env_bool("KAFKA_ENABLED", False)
KAFKA_HOSTS = env_str("KAFKA_HOSTS", None)
KAFKA_CLIENT_CERT_B64 = env_str("KAFKA_CLIENT_CERT_B64", None)
KAFKA_CLIENT_CERT_KEY_B64 = env_str("KAFKA_CLIENT_CERT_KEY_B64", None)
KAFKA_TRUSTED_CERT_B64 = env_str("KAFKA_TRUSTED_CERT_B64", None)
KAFKA_CONSUMPTION_TOPIC = env_str("KAFKA_CONSUMPTION_TOPIC", "events_plugin_ingestion")
KAFKA_PRODUCER_MAX_QUEUE_SIZE = env_int("KAFKA_PRODUCER_MAX_QUEUE_SIZE", 0 if TESTING else 1000)
KAFKA_MAX_MESSAGE_BATCH_SIZE = env_int("KAFKA_MAX_MESSAGE_BATCH_SIZE", 900_000)
KAFKA_FLUSH_FREQUENCY_MS = env_int("KAFKA_FLUSH_FREQUENCY_MS", 500)
# Port (later versions' name): put in front of every topic the server produces
# to (clickhouse_*, plugin_log_entries, events_dead_letter_queue), not the
# consumption topic, which KAFKA_CONSUMPTION_TOPIC names whole.
KAFKA_PREFIX = env_str("KAFKA_PREFIX", "") or ""
KAFKA_CONSUMER_GROUP = env_str("KAFKA_CONSUMER_GROUP", "clickhouse-ingestion") or "clickhouse-ingestion"
# Port: how long the consumer group waits for a silent (killed) server before
# handing its partitions to the others.
KAFKA_SESSION_TIMEOUT_MS = env_int("KAFKA_SESSION_TIMEOUT_MS", 2000 if TESTING else 10_000, minimum=1000)
# How long a rebalance may wait for the group's members to rejoin (the
# original's KafkaJS rebalanceTimeout, 60 s; librdkafka's max.poll.interval.ms,
# whose own default is 300 s): also the longest a server may go without
# taking messages before the group counts it gone.
KAFKA_REBALANCE_TIMEOUT_MS = env_int("KAFKA_REBALANCE_TIMEOUT_MS", 60_000, minimum=1000)

# --- ClickHouse ----------------------------------------------------------------
CLICKHOUSE_HOST = env_str("CLICKHOUSE_HOST", "localhost")
CLICKHOUSE_DATABASE = env_str("CLICKHOUSE_DATABASE", "posthog_test" if TESTING else "default")
CLICKHOUSE_USER = env_str("CLICKHOUSE_USER", "default")
CLICKHOUSE_PASSWORD = env_str("CLICKHOUSE_PASSWORD", None)
CLICKHOUSE_CA = env_str("CLICKHOUSE_CA", None)
CLICKHOUSE_SECURE = env_bool("CLICKHOUSE_SECURE", False)
# (port) With CLICKHOUSE_SECURE, verify the server's certificate (against CLICKHOUSE_CA when set).
CLICKHOUSE_VERIFY = env_bool("CLICKHOUSE_VERIFY", True)
# --- ClickHouse ports (port; the local services part, bin/services) ---------------
# The native protocol port (clickhouse-driver) and the HTTP port, ClickHouse's
# TLS ports under CLICKHOUSE_SECURE; bin/services starts its server on the
# plain ones when nothing answers there.
CLICKHOUSE_PORT = env_int("CLICKHOUSE_PORT", 9440 if CLICKHOUSE_SECURE else 9000)
CLICKHOUSE_HTTP_PORT = env_int("CLICKHOUSE_HTTP_PORT", 8443 if CLICKHOUSE_SECURE else 8123)
# (port) The ClickHouse writer (manage.py run_clickhouse_writer): its consumer
# group, how many messages or milliseconds make one insert, and the topic its
# unreadable messages go to.
CLICKHOUSE_WRITER_GROUP_ID = env_str("CLICKHOUSE_WRITER_GROUP_ID", "clickhouse-writer") or "clickhouse-writer"
CLICKHOUSE_WRITER_BATCH_SIZE = env_int("CLICKHOUSE_WRITER_BATCH_SIZE", 50_000, minimum=1)
CLICKHOUSE_WRITER_BATCH_MS = env_int("CLICKHOUSE_WRITER_BATCH_MS", 2_000, minimum=1)
CLICKHOUSE_WRITER_DEAD_LETTER_TOPIC = (
    env_str("CLICKHOUSE_WRITER_DEAD_LETTER_TOPIC", "clickhouse_dead_letter") or "clickhouse_dead_letter"
)

# --- Plugins and workers --------------------------------------------------------
BASE_DIR = env_str("BASE_DIR", ".") or "."
PLUGINS_RELOAD_PUBSUB_CHANNEL = env_str("PLUGINS_RELOAD_PUBSUB_CHANNEL", "reload-plugins") or "reload-plugins"
WORKER_CONCURRENCY = env_int("WORKER_CONCURRENCY", 0)  # 0 = one per core
TASKS_PER_WORKER = env_int("TASKS_PER_WORKER", 10, minimum=1)
TASK_TIMEOUT = env_float("TASK_TIMEOUT", 30.0)
# (port) memory limit of one plugin worker process, in MiB; 0 = no limit.
WORKER_MEMORY_LIMIT_MB = env_int("WORKER_MEMORY_LIMIT_MB", 1024)
# (port) heap limit of one JavaScript plugin's V8 isolate, in MiB.
JS_PLUGIN_MEMORY_LIMIT_MB = env_int("JS_PLUGIN_MEMORY_LIMIT_MB", 128, minimum=8)
# (port) meta requests (cache, storage, fetch, jobs, geoip) one JavaScript plugin call may make.
JS_PLUGIN_META_CALLS_MAX = env_int("JS_PLUGIN_META_CALLS_MAX", 1000, minimum=1)
# (port) a worker is replaced after this many tasks (0 = never), to bound leaks.
WORKER_MAX_TASKS = env_int("WORKER_MAX_TASKS", 0)
# (port) team workers (one team's plugins each, forked from the zygote) kept alive at once, least recently used first out.
TEAM_WORKERS_MAX = env_int("TEAM_WORKERS_MAX", 256, minimum=1)
# (port) a plugin config whose calls hang or kill its worker this many times is disabled.
WORKER_LOSSES_TO_DISABLE = env_int("WORKER_LOSSES_TO_DISABLE", 3, minimum=1)

# --- Web, logs, monitoring ------------------------------------------------------
DISABLE_WEB = env_bool("DISABLE_WEB", True)
WEB_PORT = env_int("WEB_PORT", 3008)
WEB_HOSTNAME = env_str("WEB_HOSTNAME", "0.0.0.0") or "0.0.0.0"
LOG_LEVEL = env_choice("LOG_LEVEL", "info", ("debug", "info", "log", "warn", "error", "none"))
SENTRY_DSN = env_str("SENTRY_DSN", None)
STATSD_HOST = env_str("STATSD_HOST", None)
STATSD_PORT = env_int("STATSD_PORT", 8125)
STATSD_PREFIX = env_str("STATSD_PREFIX", "plugin-server.")

# --- Scheduler and jobs ---------------------------------------------------------
SCHEDULE_LOCK_TTL = env_int("SCHEDULE_LOCK_TTL", 60, minimum=1)
JOB_QUEUES = env_str("JOB_QUEUES", "graphile")
JOB_QUEUE_GRAPHILE_URL = env_str("JOB_QUEUE_GRAPHILE_URL", "")
JOB_QUEUE_GRAPHILE_SCHEMA = env_str("JOB_QUEUE_GRAPHILE_SCHEMA", "graphile_worker")
JOB_QUEUE_GRAPHILE_PREPARED_STATEMENTS = env_bool("JOB_QUEUE_GRAPHILE_PREPARED_STATEMENTS", False)
CRASH_IF_NO_PERSISTENT_JOB_QUEUE = env_bool("CRASH_IF_NO_PERSISTENT_JOB_QUEUE", False)
STALENESS_RESTART_SECONDS = env_int("STALENESS_RESTART_SECONDS", 0)
# (port) which parts one process runs: all, ingestion, scheduler or jobs.
PLUGIN_SERVER_MODE = env_choice("PLUGIN_SERVER_MODE", "all", ("all", "ingestion", "scheduler", "jobs"))
# (port) scale of the scheduler's clock: a "minute" lasts 60 x this many seconds (tests: short).
SCHEDULE_TIME_SCALE = env_float("SCHEDULE_TIME_SCALE", 1.0, minimum=0.001)
# (port) a job raising RetryError runs at most this many times in all, waiting
# JOB_RETRY_BASE_SECONDS x 2^(attempt - 1) before each retry.
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3, minimum=1)
JOB_RETRY_BASE_SECONDS = env_float("JOB_RETRY_BASE_SECONDS", 5.0)
# (port) seconds between two looks for due jobs (the original polled every 100 ms).
JOB_POLL_INTERVAL = env_float("JOB_POLL_INTERVAL", 0.2, minimum=0.01)

# --- Ingestion ------------------------------------------------------------------
DISABLE_MMDB = env_bool("DISABLE_MMDB", TESTING)
INTERNAL_MMDB_SERVER_PORT = env_int("INTERNAL_MMDB_SERVER_PORT", 0)
DISTINCT_ID_LRU_SIZE = env_int("DISTINCT_ID_LRU_SIZE", 10_000)
PLUGIN_SERVER_IDLE = env_bool("PLUGIN_SERVER_IDLE", False)

# --- Export lane (port: on_event / on_snapshot after storing, plugin_server/export_lane.py)
# Stored events waiting for one plugin config's exports, at most (count, bytes); beyond, its waiting events are shed.
EXPORT_BACKLOG_EVENTS = env_int("EXPORT_BACKLOG_EVENTS", 10_000, minimum=1)
EXPORT_BACKLOG_BYTES = env_int("EXPORT_BACKLOG_BYTES", 16 * 1024 * 1024, minimum=1)
# All configs' waiting events together, bytes; beyond, the largest backlog is shed.
EXPORT_LANE_BYTES = env_int("EXPORT_LANE_BYTES", 256 * 1024 * 1024, minimum=1)
# Export threads (0 = WORKER_CONCURRENCY) and on_event calls of one config at once (0 = TASKS_PER_WORKER).
EXPORT_CONCURRENCY = env_int("EXPORT_CONCURRENCY", 0)
EXPORT_CONFIG_CONCURRENCY = env_int("EXPORT_CONFIG_CONCURRENCY", 0)
# Export calls of one config timed out in a row before it is slowed, then disabled.
EXPORT_TIMEOUTS_TO_SLOW = env_int("EXPORT_TIMEOUTS_TO_SLOW", 3, minimum=1)
EXPORT_TIMEOUTS_TO_DISABLE = env_int("EXPORT_TIMEOUTS_TO_DISABLE", 20, minimum=1)
# Waiting exports journaled in Redis until done (at least once across crashes); a dead server's journal is
# taken over after EXPORT_ORPHAN_SECONDS without its heartbeat; a stop waits EXPORT_DRAIN_SECONDS for the backlog.
EXPORT_JOURNAL = env_bool("EXPORT_JOURNAL", True)
EXPORT_ORPHAN_SECONDS = env_float("EXPORT_ORPHAN_SECONDS", 30.0, minimum=0.1)
EXPORT_DRAIN_SECONDS = env_float("EXPORT_DRAIN_SECONDS", 5.0)

# --- Ingestion consumer (port) ------------------------------------------------
# Messages taken off the queue per batch (one poll, one ingest, one ack).
INGESTION_BATCH_SIZE = env_int("INGESTION_BATCH_SIZE", 500, minimum=1)
# Ingestion processes (0: one per core). Above one, the main process routes
# the Celery queue over them by (team_id, distinct_id) and starts, watches and
# restarts them; with Kafka they share the consumer group (docs/running.md).
INGESTION_PROCESSES = env_int("INGESTION_PROCESSES", 1, minimum=0)
# Seconds a poll blocks on an empty queue before the loop looks around again.
INGESTION_POLL_TIMEOUT = env_float("INGESTION_POLL_TIMEOUT", 1.0)
# A message larger than this (bytes) is dead-lettered instead of ingested.
INGESTION_MAX_MESSAGE_BYTES = env_int("INGESTION_MAX_MESSAGE_BYTES", 1_048_576, minimum=1)
# A batch whose storage keeps failing is retried this many times, with
# exponential backoff from INGESTION_RETRY_BACKOFF up to INGESTION_RETRY_BACKOFF_MAX
# seconds, and only then dead-lettered.
INGESTION_RETRY_ATTEMPTS = env_int("INGESTION_RETRY_ATTEMPTS", 5, minimum=1)
INGESTION_RETRY_BACKOFF = env_float("INGESTION_RETRY_BACKOFF", 0.5)
INGESTION_RETRY_BACKOFF_MAX = env_float("INGESTION_RETRY_BACKOFF_MAX", 30.0)
# A Celery consumer whose heartbeat is older than this (seconds) is dead: the
# messages it held in flight go back to the queue.
CELERY_CONSUMER_HEARTBEAT_TTL = env_int("CELERY_CONSUMER_HEARTBEAT_TTL", 30, minimum=2)
# kombu's ``global_keyprefix`` transport option, when PostHog's Celery is
# configured with one: every queue list (and its priority lists) is read
# under this prefix.
CELERY_GLOBAL_KEYPREFIX = env_str("CELERY_GLOBAL_KEYPREFIX", "") or ""
# A message handed out more than this many times without being finished (the
# server died with it each time) is dead-lettered as ``poison``, unprocessed.
POISON_MAX_ATTEMPTS = env_int("POISON_MAX_ATTEMPTS", 3, minimum=1)
# An event nested deeper than this (objects and arrays inside each other) is
# dead-lettered as ``too_deep`` before any recursive code sees it.
MAX_EVENT_DEPTH = env_int("MAX_EVENT_DEPTH", 100, minimum=8)
# Seconds a graceful shutdown may take before the server exits anyway.
SHUTDOWN_TIMEOUT = env_float("SHUTDOWN_TIMEOUT", 30.0)
# Django's CONN_MAX_AGE (seconds a database connection is reused; 0 = a new
# one per batch). A long-lived consumer keeps its connections: connecting
# costs milliseconds per batch. Broken ones are replaced (CONN_HEALTH_CHECKS).
CONN_MAX_AGE = env_int("CONN_MAX_AGE", 600)

# --- Events processor (port) ----------------------------------------------------
# An event whose JSON (as it leaves the plugins) is larger than this many bytes
# is dead-lettered with reason event_too_large instead of stored.
MAX_EVENT_SIZE_BYTES = env_int("MAX_EVENT_SIZE_BYTES", 1_048_576, minimum=1)

# --- Capture endpoint (port) ----------------------------------------------------
# PostHog's capture API (/e/, /batch/, /decide/, ...) served by this app: always
# through the project's URLconf (any WSGI server); by run_plugin_server's own web
# server only when CAPTURE_ENABLED (and DISABLE_WEB is false). See docs/capture.md.
CAPTURE_ENABLED = env_bool("CAPTURE_ENABLED", False)
# The largest request body accepted, and the largest payload once decompressed
# (bytes); larger gets 413.
CAPTURE_MAX_BODY_BYTES = env_int("CAPTURE_MAX_BODY_BYTES", 20 * 1024 * 1024, minimum=1)
# Comma-separated addresses or networks (CIDR) of reverse proxies whose
# X-Forwarded-For is believed; empty = the peer address is the client's.
CAPTURE_TRUSTED_PROXIES = env_str("CAPTURE_TRUSTED_PROXIES", "") or ""
# Seconds a project token's team (or its absence) is remembered by one process.
CAPTURE_TOKEN_CACHE_TTL = env_float("CAPTURE_TOKEN_CACHE_TTL", 60.0)
# Seconds a request waits for its events to reach the queue before answering 503.
CAPTURE_QUEUE_TIMEOUT = env_float("CAPTURE_QUEUE_TIMEOUT", 10.0, minimum=0.1)

# --- django-q2 (plugin jobs) ------------------------------------------------------
Q_CLUSTER = {
    "name": "plugin-server-jobs",
    "orm": "default",
    "workers": env_int("JOBS_WORKERS", 1, minimum=1),
    "timeout": int(TASK_TIMEOUT * 4),
    "retry": int(TASK_TIMEOUT * 4) + 30,
    "max_attempts": 1,
    "catch_up": False,
    "sync": False,
}

# --- Plugin meta API (port) -------------------------------------------------------
# meta.fetch: the longest a request may take (a plugin may ask for less), the
# largest response body, and whether loopback/private addresses may be reached
# (off in production; tests turn it on for their local HTTP server).
PLUGIN_FETCH_TIMEOUT = env_float("PLUGIN_FETCH_TIMEOUT", 10.0)
PLUGIN_FETCH_MAX_RESPONSE_BYTES = env_int("PLUGIN_FETCH_MAX_RESPONSE_BYTES", 10 * 1024 * 1024, minimum=1)
PLUGIN_FETCH_ALLOW_PRIVATE_NETWORKS = env_bool("PLUGIN_FETCH_ALLOW_PRIVATE_NETWORKS", False)
# meta.geoip: an uncompressed GeoLite2/GeoIP2 City MMDB file ("" = none; the
# MMDB service may hand the host a database of its own instead).
MMDB_PATH = env_str("MMDB_PATH", "") or ""
# (port) where the MMDB service downloads the GeoLite2 City database (Brotli-compressed)
# when no fresh copy is stored in posthog_pluginattachment; the original's fixed URL.
MMDB_DOWNLOAD_URL = env_url("MMDB_DOWNLOAD_URL", "https://mmdb.posthog.net/", ("http", "https"))


# Every upper-case name above is one of the app's settings.
APP_SETTING_NAMES: tuple[str, ...] = tuple(name for name in list(globals()) if name.isupper() and name != "TESTING")
# What ``from plugin_server.app_settings import *`` gives a settings module.
__all__ = list(APP_SETTING_NAMES)


def default(name: str) -> Any:
    """The app's default of setting ``name`` (from the environment, else the built-in one)."""
    if name not in APP_SETTING_NAMES:
        raise KeyError(f"{name} is not a plugin server setting")
    return globals()[name]


def app_setting(name: str) -> Any:
    """Setting ``name``: the project's value where it defines one, else the app's default."""
    from django.conf import settings

    return getattr(settings, name) if hasattr(settings, name) else default(name)


def install_defaults() -> list[str]:
    """Give ``django.conf.settings`` every app setting the project does not define; returns their names."""
    from django.conf import settings

    added = [name for name in APP_SETTING_NAMES if not hasattr(settings, name)]
    for name in added:
        setattr(settings, name, default(name))
    DEFAULTED.update(added)
    return added


# The settings the project left to the app (filled in by install_defaults).
DEFAULTED: set[str] = set()
