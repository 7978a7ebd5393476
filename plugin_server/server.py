"""The plugin server process: composes the parts and owns their start and stop order.

Start (spec: plugins.md §9.2): check Postgres and Redis → start the worker
pool → web (unless DISABLE_WEB) → ingestion source and consumer → scheduler
→ job consumer → reload listener (PLUGINS_RELOAD_PUBSUB_CHANNEL; a reload
also reloads the schedule) → status heartbeat → "All systems go". The
consumer loop then runs on the main thread (without ingestion the main
thread waits for a signal). A failure while starting stops what was started
and exits 1.

Roles (PLUGIN_SERVER_MODE or ``run_plugin_server --mode``): ``all`` runs
every part; ``ingestion`` only the consumer; ``scheduler`` only the
scheduler; ``jobs`` only the job consumer. Each role has its own worker
pool; scheduler and jobs are once cluster-wide through their Redis locks,
so any number of servers of any role may run (docs/jobs.md).

Shutdown (warm, then cold, like a Celery worker):

- First SIGTERM / SIGINT / SIGHUP: the handler only sets a flag. The loop
  finishes the batch in hand (stores it, writes its dead letters,
  acknowledges it) and returns; then, in order: web, source (whatever it
  took but did not acknowledge goes back to the queue), reload listener,
  job consumer and scheduler (each releases its lock and waits for the
  runs in flight), worker pool (teardown_plugin everywhere), status,
  database connections;
  exit 0. A watchdog ends the process (exit 1) if all that takes longer than
  SHUTDOWN_TIMEOUT seconds; nothing is lost then either, as nothing
  unacknowledged is forgotten.
- Second signal: a reminder that shutdown is under way.
- Third signal: exit at once (exit 1); unacknowledged messages are delivered
  again by the next server (at least once).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections

from plugin_server.app_settings import app_setting
from plugin_server.ingestion.consumer import Consumer, EventIngester, PluginRunner
from plugin_server.ingestion.sources.base import Source
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.redis_client import get_redis
from plugin_server.status import StatusHeartbeat
from plugin_server.web import HealthServer

if TYPE_CHECKING:
    from plugin_server.job_consumer import JobConsumer
    from plugin_server.scheduler import Scheduler

logger = logging.getLogger(__name__)

# The consumer counts as stuck (not ready) when its loop has not gone round
# for this long: a poll blocks at most INGESTION_POLL_TIMEOUT, a batch takes
# well under a minute unless a service is away.
READY_STALE_AFTER = 120.0
MODES = ("all", "ingestion", "scheduler", "jobs")
# Parts stopped in this order at shutdown (spec §9.3); unknown names last.
STOP_ORDER = ("web", "source", "reload listener", "job consumer", "scheduler", "worker pool", "status")


class ManagedPool(PluginRunner, Protocol):
    """The WorkerPool as the server drives it."""

    def start(self) -> None: ...

    def run_scheduled(self, plugin_config_id: int, task: str) -> None: ...

    def run_job(self, plugin_config_id: int, job_name: str, payload: Any) -> Any: ...

    def scheduled_tasks(self) -> dict[str, list[int]]: ...

    def context(self, config_id: int) -> PluginContext | None: ...

    def reload(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """What the server runs, resolved from the settings."""

    kafka_enabled: bool
    disable_web: bool
    web_hostname: str
    web_port: int
    shutdown_timeout: float
    job_queues: str
    mode: str = "all"

    def runs(self, part: str) -> bool:
        """Whether this server's role includes ``part`` (ingestion, scheduler or jobs)."""
        return self.mode in ("all", part)

    @classmethod
    def from_settings(cls) -> ServerOptions:
        return cls(
            kafka_enabled=app_setting("KAFKA_ENABLED"),
            disable_web=app_setting("DISABLE_WEB"),
            web_hostname=app_setting("WEB_HOSTNAME"),
            web_port=app_setting("WEB_PORT"),
            shutdown_timeout=app_setting("SHUTDOWN_TIMEOUT"),
            job_queues=app_setting("JOB_QUEUES") or "",
            mode=app_setting("PLUGIN_SERVER_MODE"),
        )


def build_source(options: ServerOptions) -> Source:
    if options.kafka_enabled:
        raise ImproperlyConfigured("KAFKA_ENABLED: the Kafka source is not part of this build yet; unset it to consume Celery tasks.")
    from plugin_server.ingestion.sources.celery import CelerySource

    source = CelerySource()
    source.start()
    return source


def build_pool() -> ManagedPool:
    from plugin_server.workers.pool import WorkerPool

    pool: ManagedPool = WorkerPool()
    return pool


def build_ingester() -> EventIngester:
    from plugin_server.ingestion.ingester import Ingester

    return Ingester()


class Server:
    """One plugin server process. ``run()`` returns the exit code."""

    def __init__(
        self,
        options: ServerOptions | None = None,
        source_factory: Callable[[ServerOptions], Source] = build_source,
        pool_factory: Callable[[], ManagedPool] = build_pool,
        ingester_factory: Callable[[], EventIngester] = build_ingester,
    ) -> None:
        self.options = options or ServerOptions.from_settings()
        self._source_factory = source_factory
        self._pool_factory = pool_factory
        self._ingester_factory = ingester_factory
        self.consumer: Consumer | None = None
        self.scheduler: Scheduler | None = None
        self.jobs: JobConsumer | None = None
        self._started = False
        self._source: Source | None = None
        self._stoppables: list[tuple[str, Callable[[], None]]] = []  # started parts, stopped in reverse
        self._signals = 0
        self._stop_requested = threading.Event()

    # --- signals ---------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags here: the loop does the work when the batch in hand is done.
        self._signals += 1
        if self._signals == 1:
            self.request_stop()
        elif self._signals == 2:
            os.write(2, b"plugin server: shutting down, finishing the batch in hand; signal again to exit at once\n")
        else:
            os._exit(1)

    def request_stop(self) -> None:
        self._stop_requested.set()
        if self.consumer is not None:
            self.consumer.stop()

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start every part in order; on failure stop what started and re-raise."""
        try:
            self._start_parts()
        except BaseException:
            self.shutdown()
            raise

    def _start_parts(self) -> None:
        connection.ensure_connection()
        get_redis().ping()
        pool = self._pool_factory()
        pool.start()
        self._stoppables.append(("worker pool", pool.stop))
        if not self.options.disable_web:
            web = HealthServer(self.options.web_hostname, self.options.web_port, self.ready)
            web.start()
            self._stoppables.append(("web", web.stop))
        source_name = "none"
        if self.options.runs("ingestion"):
            source = self._source_factory(self.options)
            self._source = source
            source_name = source.name.value
            self._stoppables.append(("source", source.close))
            self.consumer = Consumer(source, self._ingester_factory(), pool)
            if self._stop_requested.is_set():
                self.consumer.stop()
        reload_schedule: Callable[[], object] = lambda: None  # noqa: E731
        if self.options.runs("scheduler"):
            from plugin_server.scheduler import Scheduler

            scheduler = self.scheduler = Scheduler.from_settings(pool)
            scheduler.start()
            self._stoppables.append(("scheduler", scheduler.stop))
            reload_schedule = scheduler.load_schedule
        if self.options.runs("jobs"):
            from plugin_server.job_consumer import JobConsumer

            jobs = self.jobs = JobConsumer(pool)
            jobs.start()
            self._stoppables.append(("job consumer", jobs.stop))
        from plugin_server.pubsub import ReloadListener

        def reload() -> None:
            try:
                pool.reload()
                reload_schedule()  # spec §9.4: the schedule follows the reloaded plugins
            finally:
                connection.close()  # the listener's thread: reloads are rare, hold no connection between them

        listener = ReloadListener(reload)
        listener.start()
        self._stoppables.append(("reload listener", listener.stop))
        status = StatusHeartbeat(job_queues=self.options.job_queues)
        status.start()
        self._stoppables.append(("status", status.stop))
        self._started = True
        logger.info("All systems go", extra={"source": source_name, "mode": self.options.mode})

    def ready(self) -> bool:
        consumer = self.consumer
        if consumer is None:
            # A scheduler or jobs server is ready once started, until it stops.
            return self._started and not self.options.runs("ingestion") and not self._stop_requested.is_set()
        if consumer.stopping:
            return False
        return time.monotonic() - consumer.last_iteration < READY_STALE_AFTER

    def shutdown(self) -> None:
        """Stop the parts in reverse start order, each once; bounded by a watchdog."""
        watchdog = threading.Timer(self.options.shutdown_timeout, self._give_up)
        watchdog.daemon = True
        watchdog.start()
        try:
            # Web first (readiness goes away), then source, listener, pool, status.
            order = {name: index for index, name in enumerate(STOP_ORDER)}
            for name, stop in sorted(self._stoppables, key=lambda part: order.get(part[0], len(order))):
                try:
                    stop()
                except Exception:  # noqa: BLE001 -- one part failing to stop must not keep the others running
                    logger.exception("stopping the %s failed", name)
            self._stoppables.clear()
            connections.close_all()
        finally:
            watchdog.cancel()

    def _give_up(self) -> None:
        logger.error("shutdown took longer than %.0fs, exiting", self.options.shutdown_timeout)
        os._exit(1)

    def run(self) -> int:
        """Start, consume until a signal, shut down; the process exit code."""
        self.install_signal_handlers()
        try:
            self.start()
        except Exception:  # noqa: BLE001 -- report any start-up failure, exit 1
            logger.exception("the plugin server failed to start")
            return 1
        try:
            if self.consumer is None:
                # No ingestion in this role: the scheduler / job consumer threads work until a signal.
                while not self._stop_requested.wait(1.0):
                    pass
            else:
                self.consumer.run()
        except Exception:
            # An error the loop does not know: stop cleanly (the batch in hand
            # is not acknowledged and comes back) and let the supervisor restart us.
            logger.exception("the consumer loop failed")
            self.shutdown()
            return 1
        logger.info("stopping the plugin server")
        self.shutdown()
        logger.info("plugin server stopped")
        return 0

