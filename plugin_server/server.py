"""The plugin server process: composes the parts and owns their start and stop order.

Every part that has a thread is a supervised service (:mod:`plugin_server.service`):
started, stopped and health-checked the same way, restarted with backoff
when it crashes, and listed with its state in ``/_ready``. :meth:`Server._start_parts`
is the composition: to add a part, build it and ``self.services.add(it)``
at its place in the start order (and name it in ``STOP_ORDER`` if it must
stop at a given point).

Start: check Postgres and Redis → (Kafka pipeline)
the Kafka producer, which checks KAFKA_HOSTS → worker pool (one
service whose children are the worker slots) → plugin log writer → web
(unless DISABLE_WEB; with CAPTURE_ENABLED it also serves PostHog's capture
API, docs/capture.md) → export lane (on_event / on_snapshot after storing,
its export threads; it adopts the export journals of stopped servers) →
consumer (its source built here) → scheduler (with
its lock keeper) → job consumer (with its lock keeper) → reload listener
(PLUGINS_RELOAD_PUBSUB_CHANNEL; a reload also reloads the schedule) → status
heartbeat → "All systems go". The main thread then waits for a signal. A
failure while starting stops what was started and exits 1.

Roles (PLUGIN_SERVER_MODE or ``run_plugin_server --mode``): ``all`` runs
every part; ``ingestion`` only the consumer; ``scheduler`` only the
scheduler; ``jobs`` only the job consumer. Each role has its own worker
pool; scheduler and jobs are once cluster-wide through their Redis locks,
so any number of servers of any role may run (docs/jobs.md).

Shutdown (warm, then cold, like a Celery worker):

- First SIGTERM / SIGINT / SIGHUP: the handler only sets flags. The consumer
  finishes the batch in hand (stores it, writes its dead letters,
  acknowledges it) and returns; then the services stop in ``STOP_ORDER``:
  web, consumer (its source: whatever it took but did not acknowledge goes
  back to the queue), export lane (waits EXPORT_DRAIN_SECONDS for waiting
  exports; what is left stays journaled for the next start), reload listener, job consumer and scheduler (each
  releases its lock and waits for the runs in flight), worker pool
  (teardown_plugin everywhere), log writer, Kafka producer (what is left
  is delivered), status, database connections;
  exit 0. A watchdog ends the process (exit 1) if all that takes longer than
  SHUTDOWN_TIMEOUT seconds; nothing is lost then either, as nothing
  unacknowledged is forgotten.
- Second signal: a reminder that shutdown is under way.
- Third signal: exit at once (exit 1); unacknowledged messages are delivered
  again by the next server (at least once).

A crashed service does not stop the server: it is restarted (the consumer
with a fresh source, so the batch it held goes back to the queue first).
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
from typing import TYPE_CHECKING, Any, Protocol, cast

from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections

from plugin_server import __version__
from plugin_server.config import get_config
from plugin_server.export_lane import ExportLane, ExportOptions, ExportRunner
from plugin_server.ingestion.consumer import Consumer, EventIngester, PluginRunner
from plugin_server.ingestion.dlq import DeadLetterStore
from plugin_server.ingestion.processes import CONSUMER_ID_ENV, INGESTION_INDEX_ENV, PARENT_PID_ENV, ParentWatch
from plugin_server.ingestion.sources.base import Source
from plugin_server.plugin_health import PluginHealthWriter
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.geoip import GeoIPLocator
from plugin_server.app_settings import app_setting
from plugin_server.redis_client import get_redis
from plugin_server.activity import ACTIVITY
from plugin_server.plugins.meta.logger import server_instance_id
from plugin_server.progress import ProgressReporter
from plugin_server.service import Service, ServiceGroup
from plugin_server.slow import SlowOperationWatch, slow_operation
from plugin_server.staleness import StalenessWatch
from plugin_server.status import StatusHeartbeat
from plugin_server.web import HealthServer

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from plugin_server.ingestion.processes import IngestionProcesses
    from plugin_server.ingestion.router import Router
    from plugin_server.ingestion.template import IngestionTemplate
    from plugin_server.job_consumer import JobConsumer
    from plugin_server.scheduler import Scheduler
    from plugin_server.workers.zygote_broker import ZygoteBroker

logger = logging.getLogger(__name__)

# The consumer counts as stuck (not ready) when its loop has not gone round
# for this long: a poll blocks at most INGESTION_POLL_TIMEOUT, a batch takes
# well under a minute unless a service is away.
READY_STALE_AFTER = 120.0
MODES = ("all", "ingestion", "scheduler", "jobs")
# Services stopped in this order at shutdown; the others after them, last started first.
STOP_ORDER = (
    "web",
    "staleness",
    "consumer",
    "export lane",
    "router",
    "ingestion processes",
    "reload listener",
    "job consumer",
    "scheduler",
    "mmdb",
    "worker pool",
    "plugin health",
    "plugin log writer",
    "kafka producer",
    "status",
)
# Asked to stop at once with the consumer (then stopped in STOP_ORDER): they only
# listen or poll, and each waits out its poll before it notices.
WIND_DOWN_TOGETHER = ("reload listener", "job consumer", "scheduler")


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
    """What the server runs, resolved from the typed configuration."""

    kafka_enabled: bool
    disable_web: bool
    web_hostname: str
    web_port: int
    shutdown_timeout: float
    job_queues: str
    mode: str = "all"
    capture_enabled: bool = False
    ingestion_processes: int = 1

    def runs(self, part: str) -> bool:
        """Whether this server's role includes ``part`` (ingestion, scheduler or jobs)."""
        return self.mode in ("all", part)

    @classmethod
    def from_settings(cls) -> ServerOptions:
        config = get_config()
        return cls(
            kafka_enabled=config.kafka_enabled,
            disable_web=config.disable_web,
            web_hostname=config.web_hostname,
            web_port=config.web_port,
            shutdown_timeout=config.shutdown_timeout,
            job_queues=",".join(config.job_queues),
            mode=config.plugin_server_mode,
            capture_enabled=config.capture_enabled,
            ingestion_processes=config.ingestion_processes,
        )


def build_web_app(options: ServerOptions) -> WSGIApplication | None:
    """Django's WSGI application when the web server also serves the capture API (docs/capture.md)."""
    if not options.capture_enabled:
        return None
    from django.core.handlers.wsgi import WSGIHandler

    return WSGIHandler()


def build_source(options: ServerOptions) -> Source:
    """The Kafka source with KAFKA_ENABLED (raises the original's error without KAFKA_HOSTS), else Celery."""
    if options.kafka_enabled:
        from plugin_server.ingestion.sources.kafka import KafkaSource

        kafka = KafkaSource()
        kafka.start()
        return kafka
    from plugin_server.ingestion.sources.celery import CelerySource

    # An ingestion process of INGESTION_PROCESSES: the consumer id its main process chose.
    source = CelerySource(consumer_id=os.environ.get(CONSUMER_ID_ENV) or None)
    source.start()
    return source


def build_pool() -> ManagedPool:
    """The worker pool; in an ingestion process of INGESTION_PROCESSES > 1 it forks its team workers
    from the main process's zygote (plugin_server/workers/zygote_broker.py), as users of its own range."""
    from plugin_server.ingestion.processes import INGESTION_INDEX_ENV
    from plugin_server.workers.pool import WorkerPool
    from plugin_server.workers.zygote_broker import UIDS_PER_PROCESS, ZYGOTE_FD_ENV

    zygote_fd = os.environ.pop(ZYGOTE_FD_ENV, "")
    index = os.environ.get(INGESTION_INDEX_ENV, "")
    uid_offset = (int(index) + 1) * UIDS_PER_PROCESS if index.isdigit() else 0
    pool: ManagedPool = WorkerPool(zygote_fd=int(zygote_fd) if zygote_fd.isdigit() else None, uid_offset=uid_offset)
    return pool


def build_ingester() -> EventIngester:
    """Postgres sink, or with KAFKA_ENABLED the Kafka sink (the ClickHouse topics)."""
    from plugin_server.ingestion.ingester import Ingester

    if get_config().kafka_enabled:
        from plugin_server.sinks.kafka import KafkaSink

        return Ingester(sink=KafkaSink())
    return Ingester()


def build_dead_letters(options: ServerOptions) -> DeadLetterStore:
    """The dead-letter table; with Kafka, also the ``events_dead_letter_queue`` topic."""
    if options.kafka_enabled:
        from plugin_server.ingestion.dlq_topic import DeadLetterTopic

        return DeadLetterStore(topic=DeadLetterTopic())
    return DeadLetterStore()


class KafkaProducerService(Service):
    """The process's batching producer (its own timer thread): delivered at shutdown, after the pool."""

    name = "kafka producer"
    threaded = False

    def prepare(self) -> None:
        from plugin_server.kafka_client import client_settings

        client_settings()  # the original's error at start if KAFKA_HOSTS is empty

    def cleanup(self) -> None:
        from plugin_server.sinks.kafka_producer import close_shared_producer

        close_shared_producer()


class PoolService(Service):
    """The worker pool as a service: no thread of its own, its worker slots are its children."""

    name = "worker pool"
    threaded = False

    def __init__(self, pool: ManagedPool) -> None:
        super().__init__()
        self.pool = pool

    def prepare(self) -> None:
        self.pool.start()

    def cleanup(self) -> None:
        self.pool.stop()

    def children(self) -> list[Service]:
        slots: Callable[[], list[Service]] | None = getattr(self.pool, "slots", None)
        return slots() if slots is not None else []


class ConsumerService(Service):
    """The consumer loop on its own thread; a crash closes the source (the batch in hand goes
    back to the queue) and starts again on a fresh one."""

    name = "consumer"

    def __init__(self, make_consumer: Callable[[], Consumer], stale_after: float = READY_STALE_AFTER) -> None:
        super().__init__()
        self._make_consumer = make_consumer
        self.consumer = make_consumer()
        self._stale_after = stale_after

    def run(self) -> None:
        self.consumer.run()

    def interrupt(self) -> None:
        self.consumer.stop()  # only a flag: safe from a signal handler

    def recover(self) -> None:
        self.consumer.source.close()
        self.consumer = self._make_consumer()

    def cleanup(self) -> None:
        self.consumer.source.close()

    def children(self) -> tuple[Service, ...]:
        # The source's own threads (the Celery heartbeat): started with the source, shown here.
        services: Callable[[], tuple[Service, ...]] | None = getattr(self.consumer.source, "services", None)
        return services() if services is not None else ()

    def problem(self) -> str | None:
        idle = time.monotonic() - self.consumer.last_iteration
        if idle > self._stale_after:
            return f"the loop has not gone round for {idle:.0f}s"
        return None


class Server:
    """One plugin server process. ``run()`` returns the exit code."""

    def __init__(
        self,
        options: ServerOptions | None = None,
        source_factory: Callable[[ServerOptions], Source] = build_source,
        pool_factory: Callable[[], ManagedPool] = build_pool,
        ingester_factory: Callable[[], EventIngester] = build_ingester,
        ingestion_template: IngestionTemplate | None = None,
    ) -> None:
        self.options = options or ServerOptions.from_settings()
        # INGESTION_PROCESSES > 1: what run_plugin_server forked the ingestion processes' template as (template.py).
        self._ingestion_template = ingestion_template
        self._source_factory = source_factory
        self._pool_factory = pool_factory
        self._ingester_factory = ingester_factory
        self.services = ServiceGroup(STOP_ORDER)
        self.pool: ManagedPool | None = None
        self.consumer_service: ConsumerService | None = None
        self.scheduler: Scheduler | None = None
        self.jobs: JobConsumer | None = None
        self.export_lane: ExportLane | None = None
        self.web: HealthServer | None = None
        self.router: Router | None = None
        self.ingestion_processes: IngestionProcesses | None = None
        self.exit_code = 0
        self._started = False
        self._signals = 0
        self._stop_requested = threading.Event()

    @property
    def consumer(self) -> Consumer | None:
        """The consumer loop in use (None when this role does not ingest)."""
        return self.consumer_service.consumer if self.consumer_service is not None else None

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

    def request_stop(self, exit_code: int = 0) -> None:
        """Ask the server to stop (from a signal handler or any thread); ``run`` returns ``exit_code``."""
        if exit_code and not self.exit_code:
            self.exit_code = exit_code
        self._stop_requested.set()
        if self.consumer_service is not None:
            self.consumer_service.request_stop()

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start every part in order; on failure stop what started and re-raise."""
        try:
            self._start_parts()
        except BaseException:
            self.shutdown()
            raise

    def _start_parts(self) -> None:
        """The composition: each part is built and added (started) in the start order."""
        connection.ensure_connection()
        get_redis().ping()
        job_queues = self._check_job_store()
        if self.options.kafka_enabled:
            self.services.add(KafkaProducerService())
        pool = self.pool = self._pool_factory()
        broker: ZygoteBroker | None = None
        share_zygote: Callable[[int], ZygoteBroker] | None = getattr(pool, "share_zygote", None)
        if self.options.runs("ingestion") and self.options.ingestion_processes > 1 and share_zygote is not None:
            # One zygote for the server: the ingestion processes fork their team workers from this one's.
            broker = share_zygote(self.options.ingestion_processes)
        self._add_mmdb(pool)
        self.services.add(PoolService(pool))
        log_writer = getattr(getattr(pool, "host", None), "log_writer", None)
        if isinstance(log_writer, Service):
            self.services.add(log_writer)
        if not self.options.disable_web:
            self.web = HealthServer(self.options.web_hostname, self.options.web_port, self.readiness, app=build_web_app(self.options))
            self.services.add(self.web)
        source_name = "none"
        parent_pid = os.environ.get(PARENT_PID_ENV)
        if parent_pid:
            # An ingestion process: named in ps and /proc/<pid>/comm; stops when its parent is gone.
            from plugin_server.ingestion.template import set_process_name

            set_process_name(f"ingestion-{os.environ.get(INGESTION_INDEX_ENV, '')}")
            self.services.add(ParentWatch(int(parent_pid), self.request_stop))
        if self.options.runs("ingestion") and self.options.ingestion_processes > 1:
            source_name = self._add_ingestion_processes(broker)
        elif self.options.runs("ingestion"):
            if not self.options.kafka_enabled and not parent_pid:
                # One process routes nothing: slices a server with several left behind go back on the queue.
                from plugin_server.ingestion.router import move_back_leftover_slices

                move_back_leftover_slices(get_redis(), get_config().plugins_celery_queue, app_setting("CELERY_GLOBAL_KEYPREFIX"), 0)
            ingester = self._ingester_factory()

            exports = self._add_export_lane(pool)

            def make_consumer() -> Consumer:
                return Consumer(
                    self._source_factory(self.options), ingester, pool, dead_letters=build_dead_letters(self.options), exports=exports
                )

            self.consumer_service = ConsumerService(make_consumer)
            source_name = self.consumer_service.consumer.source.name.value
            if self._stop_requested.is_set():
                self.consumer_service.consumer.stop()
            self.services.add(self.consumer_service)
        reload_schedule: Callable[[], object] = lambda: None  # noqa: E731
        if self.options.runs("scheduler"):
            from plugin_server.scheduler import Scheduler

            scheduler = self.scheduler = Scheduler.from_settings(pool)
            self.services.add(scheduler)
            reload_schedule = scheduler.load_schedule
        if self.options.runs("jobs") and job_queues:
            from plugin_server.job_consumer import JobConsumer

            self.jobs = JobConsumer(pool)
            self.services.add(self.jobs)
        from plugin_server.pubsub import ReloadListener

        def reload() -> None:
            try:
                with slow_operation("reload"):
                    pool.reload()
                reload_schedule()  # the schedule follows the reloaded plugins
            finally:
                connection.close()  # the listener's thread: reloads are rare, hold no connection between them

        self.services.add(ReloadListener(reload))
        self.services.add(StatusHeartbeat(job_queues=job_queues))
        self._add_watches(pool)
        self._started = True
        logger.info("All systems go", extra={"source": source_name, "mode": self.options.mode})

    def _add_ingestion_processes(self, broker: ZygoteBroker | None) -> str:
        """INGESTION_PROCESSES > 1: the ingestion processes, and for Celery the router that feeds
        them (plugin_server/ingestion/router.py, processes.py); the source's name."""
        from plugin_server.ingestion.processes import IngestionProcesses

        count = self.options.ingestion_processes
        config = get_config()
        fixed = {"INGESTION_PROCESSES": "1", "DISABLE_WEB": "true", "PLUGIN_SERVER_MODE": "ingestion"}
        if self.options.kafka_enabled:
            # One consumer per process in the group: the partitions are spread over them.
            child_env: Callable[[int], dict[str, str]] = lambda index: fixed  # noqa: E731
            give_back: Callable[[int, str], object] | None = None
            source_name = "kafka"
        else:
            from plugin_server.ingestion.router import Router, slice_queue

            queue = config.plugins_celery_queue
            from plugin_server.ingestion.sources.celery import CelerySource

            child_env = lambda index: {**fixed, "PLUGINS_CELERY_QUEUE": slice_queue(queue, index)}  # noqa: E731
            give_back = lambda index, consumer_id: CelerySource(queue=slice_queue(queue, index)).give_back_dead(consumer_id)  # noqa: E731
            self.router = Router(count, config.ingestion_batch_size, config.ingestion_poll_timeout)
            source_name = "celery"
        self.ingestion_processes = IngestionProcesses(
            count, child_env, shutdown_timeout=max(self.options.shutdown_timeout - 2, 1), give_back=give_back,
            connect=broker.connect if broker is not None else None, template=self._ingestion_template,
        )
        self.services.add(self.ingestion_processes)
        if self.router is not None:
            self.services.add(self.router)
        return source_name

    def _check_job_store(self) -> str:
        """The job queues that work ("graphile" or ""); CRASH_IF_NO_PERSISTENT_JOB_QUEUE decides
        whether a job store that cannot be used stops the start."""
        from plugin_server.jobs import PERSISTENT_QUEUE, check_job_store, set_job_store_problem

        config = get_config()
        queues = tuple(name.strip() for name in self.options.job_queues.split(",") if name.strip())
        problem = check_job_store(queues)
        set_job_store_problem(problem)
        if problem is None:
            return PERSISTENT_QUEUE
        if config.crash_if_no_persistent_job_queue:
            raise ImproperlyConfigured(f"CRASH_IF_NO_PERSISTENT_JOB_QUEUE is set and {problem}")
        logger.error("no job queue: %s; plugin jobs are refused (and logged in each plugin's log) until a restart", problem)
        return ""

    def _add_export_lane(self, pool: ManagedPool) -> ExportLane | None:
        """on_event / on_snapshot off the consumer's path (a pool without ``export`` runs them inline)."""
        if not hasattr(pool, "export"):
            return None
        host = getattr(pool, "host", None)
        write_log = getattr(host, "write_log", None)

        def plugin_log(ctx: PluginContext, level: str, message: str) -> None:
            if write_log is not None:
                write_log(ctx, "SYSTEM", level, message)

        overrides: dict[str, Any] = {}
        pool_settings = getattr(pool, "settings", None)
        if not get_config().export_concurrency and pool_settings is not None:
            # As many export threads as the pool runs tasks at once (WORKER_CONCURRENCY as the pool resolved it).
            overrides["concurrency"] = pool_settings.concurrency
        options = ExportOptions.from_settings(**overrides)
        lane = self.export_lane = ExportLane(cast(ExportRunner, pool), options, plugin_log=plugin_log)
        self.services.add(lane)
        return lane

    def _add_mmdb(self, pool: ManagedPool) -> None:
        """The GeoIP database for meta.geoip, unless DISABLE_MMDB or the operator's MMDB_PATH."""
        config = get_config()
        geoip = getattr(getattr(pool, "host", None), "geoip", None)
        if config.disable_mmdb or config.mmdb_path or not isinstance(geoip, GeoIPLocator):
            return
        from plugin_server.mmdb import MMDBService

        self.services.add(MMDBService(geoip, config.mmdb_download_url))

    def _add_watches(self, pool: ManagedPool) -> None:
        """Slow-operation warnings, the progress line and gauges, and the staleness restart."""
        config = get_config()
        slots: Callable[[], list[Any]] = getattr(pool, "slots", list)
        self.services.add(SlowOperationWatch(config.task_timeout))
        self.services.add(PluginHealthWriter())
        self.services.add(ProgressReporter(queue_depth=self._queue_depth, slots=slots))
        # With INGESTION_PROCESSES > 1 each ingestion process watches its own staleness (and is
        # restarted by this one when it exits); the main process ingests nothing itself.
        if config.staleness_restart_seconds > 0 and self.options.runs("ingestion") and self.options.ingestion_processes <= 1:
            self.services.add(
                StalenessWatch(
                    config.staleness_restart_seconds,
                    on_stale=lambda: self.request_stop(exit_code=1),
                    instance_id=str(server_instance_id()),
                    pool_stats=lambda: {"threads": len(slots()), "queue_size": sum(slot.backlog() for slot in slots())},
                )
            )
        ACTIVITY.record("serverStart")

    def _queue_depth(self) -> int | None:
        consumer = self.consumer
        depth: Callable[[], int] | None = getattr(consumer.source, "queue_depth", None) if consumer is not None else None
        return depth() if depth is not None else None

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready while started, not stopping and every service is running without a problem."""
        ready = self._started and not self._stop_requested.is_set() and self.services.healthy()
        return ready, {"mode": self.options.mode, "services": self.services.health()}

    def ready(self) -> bool:
        return self.readiness()[0]

    def shutdown(self) -> None:
        """Stop the services in the stop order, each once; bounded by a watchdog."""
        watchdog = threading.Timer(self.options.shutdown_timeout, self._give_up)
        watchdog.daemon = True
        watchdog.start()
        try:
            if self.consumer_service is not None:
                self.consumer_service.request_stop()
            # The pool's users wind down together: each waits out a poll of up
            # to a second, so stopping them one after the other added those up.
            for name in WIND_DOWN_TOGETHER:
                service = self.services.get(name)
                if service is not None:
                    service.request_stop()
            self.services.stop_all()
            from plugin_server.jobs import set_job_store_problem

            set_job_store_problem(None)  # the verdict was this server's: nothing of it outlives the server
            connections.close_all()
        finally:
            watchdog.cancel()

    def _give_up(self) -> None:
        logger.error("shutdown took longer than %.0fs, exiting", self.options.shutdown_timeout)
        os._exit(1)

    def run(self) -> int:
        """Start, run until a signal (or a fatal condition), shut down; the process exit code."""
        from plugin_server.sentry import flush as flush_sentry
        from plugin_server.sentry import init_sentry

        config = get_config()
        init_sentry(config.sentry_dsn, __version__)
        if config.statsd_host:
            from plugin_server.query_metrics import install_postgres_metrics

            install_postgres_metrics()
        self.install_signal_handlers()
        try:
            self.start()
        except Exception:  # noqa: BLE001 -- report any start-up failure, exit 1
            logger.exception("the plugin server failed to start")
            flush_sentry()
            return 1
        while not self._stop_requested.wait(1.0):
            pass
        logger.info("stopping the plugin server")
        self.shutdown()
        logger.info("plugin server stopped")
        flush_sentry()
        return self.exit_code
