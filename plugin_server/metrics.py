"""StatsD metrics: names in one place, a backend that is off unless STATSD_HOST is set.

Names are the original's (spec: plugins.md §14.2) plus the port's own under
``ingestion.*``, ``dlq.*`` and ``worker.*``. Tests use :class:`RecordingMetrics`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Protocol

from django.conf import settings

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

# --- Metric names of the plugin meta host -----------------------------------------
LOGS_ENTRIES_CREATED = "logs.entries_created"  # count, tags source, team_id, plugin_id (the original's)
LOGS_ENTRIES_DROPPED = "logs.entries_dropped"  # count (port): plugin log entries lost (buffer full, refused row)
LOGS_FLUSH_FAILED = "logs.flush_failed"  # count (port): a plugin log batch could not be written
META_KAFKA_DELIVERY_FAILED = "meta.kafka_delivery_failed"  # count (port): a capture or log entry lost by Kafka

# --- Metric names of the capture endpoint (port) ------------------------------------
CAPTURE_EVENTS_QUEUED = "capture.events_queued"  # count, tag pipeline (celery, kafka)
CAPTURE_REQUESTS_REJECTED = "capture.requests_rejected"  # count, tag code (invalid_payload, missing_api_key, ...)
CAPTURE_QUEUE_UNAVAILABLE = "capture.queue_unavailable"  # count: requests answered 503
CAPTURE_REQUEST_TIME = "capture.request_time"  # timing: one accepted request, body read to queued


# --- Metric names of the supervised services (port) ----------------------------------
SERVICE_CRASHED = "service.crashed"  # count, tag service: a service's run() crashed and is restarted


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
        if settings.STATSD_HOST:
            _backend = StatsdMetrics(settings.STATSD_HOST, settings.STATSD_PORT, settings.STATSD_PREFIX or "")
        else:
            _backend = NullMetrics()
    return _backend


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


