"""StatsD metrics: every name in one place, a backend that is off unless STATSD_HOST is set.

Every metric the server sends is named here: the original's (the ``kafka_queue.*`` and ``query.kafka_send`` ones are
sent by the Kafka pipeline, ``query.clickhouse`` by the ClickHouse writer)
and the port's own (``ingestion.*``, ``dlq.*``, ``worker.*``, ``jobs.*``,
``scheduler.*``, ``service.*``, ``mmdb.*``, ``health.*``,
``clickhouse_writer.*``). Each is prefixed
with ``STATSD_PREFIX`` and carries Telegraf-style tags, as the original's
did. docs/operations.md lists them with their meaning. Tests use
:class:`RecordingMetrics`, or a real UDP socket.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from django.core.signals import setting_changed
from django.dispatch import receiver

Tags = Mapping[str, str | int]


# --- Metric names of the ingestion consumer and dead letters (port) ---------------
INGESTION_MESSAGES_POLLED = "ingestion.messages_polled"  # count, tag source
INGESTION_BATCH_SIZE = "ingestion.batch_size"  # gauge: messages in the last batch
INGESTION_BATCH_TIME = "ingestion.batch_time"  # timing: poll to ack, one batch
INGESTION_INGEST_TIME = "ingestion.ingest_time"  # timing: Ingester.ingest of one batch
INGESTION_PLUGINS_TIME = "ingestion.plugins_time"  # timing: WorkerPool.process_events
INGESTION_EVENTS_STORED = "ingestion.events_stored"  # count
INGESTION_EVENTS_DUPLICATE = "ingestion.events_duplicate"  # count: re-delivered, already stored
INGESTION_EVENTS_DROPPED = "ingestion.events_dropped"  # count: dropped by a plugin
INGESTION_MESSAGES_INVALID = "ingestion.messages_invalid"  # count, tag reason
INGESTION_RETRIES = "ingestion.retries"  # count: a batch retried after a RetriableError
INGESTION_SOURCE_RECOVERED = "ingestion.source.recovered"  # count: in-flight messages of dead consumers requeued
DLQ_WRITTEN = "dlq.written"  # count, tag reason
DLQ_REPLAYED = "dlq.replayed"  # count

# --- Metric names of the Kafka pipeline (the original's where it had them) --------------
KAFKA_DELIVERY_FAILED = "kafka_queue.delivery_failed"  # count (port): messages the broker did not acknowledge
KAFKA_DEAD_LETTERED = "events_added_to_dead_letter_queue"  # count (later versions' name)
KAFKA_PARTITIONS_REVOKED = "kafka_queue.partitions_revoked"  # count (port): partitions handed to another consumer
CLICKHOUSE_PERSON_DELETE_FAILED = "kafka_queue.person_delete_failed"  # count (port): merged persons whose ClickHouse delete failed
KAFKA_STALE_DELIVERIES = "kafka_queue.stale_deliveries"  # count (port): taken from a partition lost before the commit

# --- Metric names of the events processor (port) -----------------------------------
INGESTION_SANITISED = "ingestion.sanitised"  # count, tag team_id: NUL, lone surrogates or NaN replaced
INGESTION_TIMESTAMP_IGNORED = "ingestion.timestamp_ignored"  # count, tags team_id, input
INGESTION_BATCH_SPLIT = "ingestion.batch_split"  # count: a batch the database refused was bisected
INGESTION_DEFINITION_NAME_TOO_LONG = "ingestion.definitions.name_too_long"  # count, tag team_id
SINK_WRITE_TIME = "ingestion.sink.write_time"  # timing, tag sink: one batch written
SINK_ROWS = "ingestion.sink.rows"  # count, tags sink, table: rows written

# --- Metric names of the plugin worker pool (port) --------------------------------------
WORKER_TASK = "piscina_task.{kind}"  # timing: one task on a worker (process, on_events, task, ...)
WORKER_REPLACED = "worker.replaced"  # count, tag reason: died, hung, exit, recycle, stop
WORKER_RETRY = "worker.retry"  # count: a task retried on a new worker after losing one
WORKER_REPORT_DROPPED = "worker.report_dropped"  # count: log lines or errors over a task's bound

# --- Metric names of the export lane (port; plugin_server/export_lane.py) ---------------
EXPORTS_EVENTS_QUEUED = "exports.events_queued"  # count: stored events queued for a config's on_event/on_snapshot
EXPORTS_EVENTS_EXPORTED = "exports.events_exported"  # count: events whose export call returned
EXPORTS_EVENTS_FAILED = "exports.events_failed"  # count: events whose export task failed (worker lost twice)
EXPORTS_EVENTS_SHED = "exports.events_shed"  # count, tag reason (backlog_full, lane_full, disabled)
EXPORTS_EVENTS_LEFT = "exports.events_left"  # count: waiting at a stop, journaled, exported after the restart
EXPORTS_EVENTS_LOST = "exports.events_lost"  # count: waiting at a stop and not journaled (Redis away)
EXPORTS_EVENTS_RECOVERED = "exports.events_recovered"  # count: adopted from a stopped or crashed server's journal
EXPORTS_JOURNAL_FAILED = "exports.journal_failed"  # count: chunks that could not be journaled in Redis
EXPORTS_CONFIG_SLOWED = "exports.config_slowed"  # count: a config slowed after calls in a row timed out
EXPORTS_CONFIG_DISABLED = "exports.config_disabled"  # count: a config disabled after calls in a row timed out
EXPORTS_BACKLOG_EVENTS = "exports.backlog_events"  # gauge: events waiting for exports
EXPORTS_BACKLOG_BYTES = "exports.backlog_bytes"  # gauge: their size

# --- Metric names of the plugin meta host -----------------------------------------
LOGS_ENTRIES_CREATED = "logs.entries_created"  # count, tags source, team_id, plugin_id (the original's)
LOGS_ENTRIES_DROPPED = "logs.entries_dropped"  # count (port): plugin log entries lost (buffer full, refused row)
LOGS_FLUSH_FAILED = "logs.flush_failed"  # count (port): a plugin log batch could not be written

# --- Metric names of the capture endpoint (port) ------------------------------------
CAPTURE_EVENTS_QUEUED = "capture.events_queued"  # count, tag pipeline (celery, kafka)
CAPTURE_REQUESTS_REJECTED = "capture.requests_rejected"  # count, tag code (invalid_payload, missing_api_key, ...)
CAPTURE_QUEUE_UNAVAILABLE = "capture.queue_unavailable"  # count: requests answered 503
CAPTURE_REQUEST_TIME = "capture.request_time"  # timing: one accepted request, body read to queued


# --- Metric names of the ClickHouse writer (port) ------------------------------------
CLICKHOUSE_WRITER_ROWS = "clickhouse_writer.rows"  # count, tag table: rows inserted
CLICKHOUSE_WRITER_INSERT_TIME = "clickhouse_writer.insert_time"  # timing, tag table: one insert
CLICKHOUSE_WRITER_DEAD_LETTERS = "clickhouse_writer.dead_letters"  # count, tag topic: messages dead-lettered
CLICKHOUSE_WRITER_INSERT_RETRIES = "clickhouse_writer.insert_retries"  # count: inserts retried after a network error


# --- The original's names ----------------------------------------------
QUERY_POSTGRES = "query.postgres"  # timing, tag queryTag: one statement (+ QUERY_POSTGRES ".total" count)
QUERY_POSTGRES_TRANSACTION = "query.postgres_transation"  # (sic) timing: one transaction (+ ".total")
QUERY_CLICKHOUSE = "query.clickhouse"  # timing: one ClickHouse query (+ ".total")
QUERY_REDIS = {  # timing per meta.cache command (+ ".total"); the original's names, typo included
    "get": "query.regisGet",
    "set": "query.redisSet",
    "incr": "query.redisIncr",
    "expire": "query.redisExpire",
    "lpush": "query.redisLPush",
    "brpop": "query.redisBRPop",
}
QUERY_KAFKA_SEND = "query.kafka_send"  # timing: one producer send (+ ".total")
TOTAL_SUFFIX = ".total"  # the count beside each query.* timing
KAFKA_QUEUE_SINGLE_EVENT = "kafka_queue.single_event"  # timing: one event, plugins to stored
KAFKA_QUEUE_SINGLE_INGESTION = "kafka_queue.single_ingestion"  # timing: storing one event
KAFKA_QUEUE_SINGLE_ON_EVENT = "kafka_queue.single_on_event"  # timing: on_event of one event
KAFKA_QUEUE_SINGLE_ON_SNAPSHOT = "kafka_queue.single_on_snapshot"  # timing: on_snapshot of one event
KAFKA_QUEUE_EACH_EVENT = "kafka_queue.each_event"  # timing: one event in a batch
KAFKA_QUEUE_EACH_BATCH = "kafka_queue.each_batch"  # timing: one Kafka batch
KAFKA_QUEUE_SINGLE_SAVE_STANDARD = "kafka_queue.single_save.standard"  # timing, tag team_id
KAFKA_QUEUE_SINGLE_SAVE_SNAPSHOT = "kafka_queue.single_save.snapshot"  # timing, tag team_id
HOOKS_SEND_TASK = "hooks.send_task"  # count: webhook Celery tasks sent
HOOKS_SEND_TASK_FAILED = "hooks.send_task_failed"  # count (port): webhook tasks that could not be sent
PISCINA_STAT = "piscina.{stat}"  # gauge every 10 s: utilization, threads, queue_size, runTime.*
PLUGIN_PROCESS_EVENT = "plugin.process_event"  # timing, tags plugin, teamId: mean per call in one batch
PLUGIN_PROCESS_EVENT_BATCH = "plugin.process_event_batch"  # timing, tags plugin, teamId
PLUGIN_METHOD = "plugin.{plugin}.{method}"  # timing: plugin.<name>.on_event, .process_event_batch
PLUGIN_METHOD_ERROR = "plugin.{plugin}.{method}.ERROR"  # count: errors of one method of one plugin
PLUGIN_TASK = "plugin.task.{kind}.{task}.{config_id}"  # timing: a scheduled task or job of one config
PLUGIN_TASK_ERROR = "plugin.task.{kind}.{task}.{config_id}.ERROR"  # count
MMDB_INTERNAL_REQUEST = "mmdb.internal_request"  # timing: one meta.geoip.locate served by the main process
EVENT_LOOP_LAG = "event_loop_lag"  # timing every 2 s: how late a 2 s sleep of the main process wakes
ALERTS_STALE_RESTARTED = "alerts.stale_plugin_server_restarted"  # count: STALENESS_RESTART_SECONDS fired

# --- Persons and webhooks (port) ---------------------------------------------------
PERSONS_CREATED = "ingestion.persons.created"  # count
PERSONS_MERGED = "ingestion.persons.merged"  # count
PERSONS_RETRIES = "ingestion.persons.retries"  # count: a person batch retried after a race
PERSONS_INVALID_DISTINCT_ID = "ingestion.persons.invalid_distinct_id"  # count, tag team_id

# --- Scheduler and jobs (port) -----------------------------------------------------
SCHEDULER_SKIPPED = "scheduler.skipped"  # count, tag task: the previous run still going
SCHEDULER_RUN = "scheduler.{task}"  # timing: one scheduled run (runEveryMinute, ...)
JOBS_RUN = "jobs.run"  # timing: one job
JOBS_DONE = "jobs.done"  # count
JOBS_DROPPED = "jobs.dropped"  # count: its plugin config was deleted or disabled
JOBS_RETRIED = "jobs.retried"  # count: RetryError, run again later
JOBS_FAILED = "jobs.failed"  # count: out of attempts
JOBS_REFUSED = "jobs.refused"  # count: enqueued while the job store was unreachable

# --- The server (port) -------------------------------------------------------------
SERVICE_CRASHED = "service.crashed"  # count, tag service: a service's run() crashed and is restarted
SLOW_OPERATION = "slow_operation"  # count, tag operation: still running after TASK_TIMEOUT s
INGESTION_QUEUE_DEPTH = "ingestion.queue_depth"  # gauge every 10 s: messages waiting in the source
INGESTION_EVENTS_PER_SECOND = "ingestion.events_per_second"  # gauge every 10 s
MMDB_REFRESHED = "mmdb.refreshed"  # count, tag outcome: downloaded, unavailable, failed
HEALTH_WRITTEN = "health.written"  # count: plugin health rows written (one statement per flush)


class MetricsBackend(Protocol):
    def incr(self, name: str, value: int = 1, tags: Tags | None = None) -> None: ...
    def timing(self, name: str, ms: float, tags: Tags | None = None) -> None: ...
    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None: ...


class NullMetrics:
    """Used when STATSD_HOST is empty."""

    def incr(self, name: str, value: int = 1, tags: Tags | None = None) -> None:
        pass

    def timing(self, name: str, ms: float, tags: Tags | None = None) -> None:
        pass

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        pass


def _with_tags(name: str, tags: Tags | None) -> str:
    # Telegraf-style tags, as the original sent them.
    if not tags:
        return name
    return name + "," + ",".join(f"{key}={value}" for key, value in tags.items())


class StatsdMetrics:
    """Sends to StatsD over UDP with the ``statsd`` package."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        import statsd

        self._client = statsd.StatsClient(host, port, prefix=prefix.rstrip(".") or None)

    def incr(self, name: str, value: int = 1, tags: Tags | None = None) -> None:
        self._client.incr(_with_tags(name, tags), value)

    def timing(self, name: str, ms: float, tags: Tags | None = None) -> None:
        self._client.timing(_with_tags(name, tags), ms)

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        self._client.gauge(_with_tags(name, tags), value)


class RecordingMetrics:
    """Keeps every call, for tests."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, dict[str, str | int]]] = []

    def incr(self, name: str, value: int = 1, tags: Tags | None = None) -> None:
        self.calls.append(("incr", name, value, dict(tags or {})))

    def timing(self, name: str, ms: float, tags: Tags | None = None) -> None:
        self.calls.append(("timing", name, ms, dict(tags or {})))

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        self.calls.append(("gauge", name, value, dict(tags or {})))

    def total(self, name: str) -> float:
        return sum(value for kind, metric, value, _ in self.calls if metric == name and kind == "incr")


_backend: MetricsBackend | None = None


def get_metrics() -> MetricsBackend:
    global _backend
    if _backend is None:
        from plugin_server.config import get_config

        config = get_config()
        if config.statsd_host:
            _backend = StatsdMetrics(config.statsd_host, config.statsd_port, config.statsd_prefix or "")
        else:
            _backend = NullMetrics()
    return _backend


@receiver(setting_changed)
def _drop_backend(setting: str, **kwargs: Any) -> None:
    # override_settings(STATSD_*) in tests: the next get_metrics() builds the backend anew.
    global _backend
    if setting.startswith("STATSD_"):
        _backend = None


def set_metrics(backend: MetricsBackend | None) -> None:
    """Replace the backend (tests install a RecordingMetrics)."""
    global _backend
    _backend = backend


@contextmanager
def timed(name: str, tags: Tags | None = None) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        get_metrics().timing(name, (time.perf_counter() - start) * 1000, tags)


