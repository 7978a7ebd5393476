"""The main-process side of ``meta``: serves what sandboxed plugins ask for.

Plugin code runs in worker processes that hold no credentials. Everything a
plugin does beyond computing (cache, storage, logging, fetch, capture, jobs,
geoip) arrives here as ``(api, method, args, kwargs)`` over the worker's pipe,
together with the :class:`PluginContext` the pool knows the request belongs
to. :meth:`MetaHost.call` refuses anything outside :data:`ALLOWED_CALLS`,
checks the arguments against the method's signature, and turns failures into
:class:`~plugin_server.exceptions.MetaCallError` with a message meant for the
plugin author. Answers are JSON-able (bytes allowed).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from django.db import DatabaseError

from plugin_server.exceptions import MetaCallError
from plugin_server.metrics import MMDB_INTERNAL_REQUEST, QUERY_REDIS, TOTAL_SUFFIX, get_metrics
from plugin_server.plugins.meta.cache import PluginCache
from plugin_server.plugins.meta.capture import PluginCapture
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.fetch import PluginFetch
from plugin_server.plugins.meta.geoip import GeoIPLocator
from plugin_server.plugins.meta.jobs import PluginJobs
from plugin_server.plugins.meta.logger import LOG_METHODS, LogEntry, LogSource, LogType, PluginLogWriter
from plugin_server.plugins.meta.producer import MetaProducer
from plugin_server.plugins.meta.storage import PluginStorageAPI

__all__ = ["ALLOWED_CALLS", "MetaHost", "PluginContext"]

logger = logging.getLogger(__name__)

ALLOWED_CALLS: dict[str, frozenset[str]] = {
    "cache": frozenset({"set", "get", "incr", "expire", "lpush", "lrange", "llen", "lpop", "lrem"}),
    "storage": frozenset({"get", "set", "delete"}),
    "logger": frozenset(LOG_METHODS),
    "fetch": frozenset({"fetch"}),
    "posthog": frozenset({"capture"}),
    "jobs": frozenset({"run_now", "run_in", "run_at"}),
    "geoip": frozenset({"locate"}),
}

# Failures of the services behind meta: the plugin gets a MetaCallError, the
# operator gets the traceback in the server log.
_SERVICE_ERRORS = (redis.RedisError, DatabaseError)


class _LoggerAPI:
    """``meta.logger.<level>(*args)`` and ``print``: CONSOLE entries, batched."""

    def __init__(self, writer: PluginLogWriter) -> None:
        self._writer = writer
        for method, entry_type in LOG_METHODS.items():
            setattr(self, method, self._level(entry_type))

    def _level(self, entry_type: LogType) -> Callable[..., None]:
        def write(ctx: PluginContext, *args: object) -> None:
            self._writer.log(ctx, "CONSOLE", entry_type, *args)

        return write


# The original's names for the meta calls it timed: Redis commands of meta.cache and
# the GeoIP lookups its workers asked the main process for (here every locate is such a request).
_CALL_METRICS = {
    **{("cache", method): name for method, name in QUERY_REDIS.items()},
    ("geoip", "locate"): MMDB_INTERNAL_REQUEST,
}


def _send_call_metric(name: str, ms: float) -> None:
    metrics = get_metrics()
    metrics.timing(name, ms)
    if name.startswith("query."):
        metrics.incr(name + TOTAL_SUFFIX)


class MetaHost:
    """Dispatches the meta calls of every worker; one per server process.

    Thread-safe as long as its services are (Django opens one connection per
    thread, redis-py pools its connections, the log writer locks). Call
    :meth:`flush` at batch boundaries so plugin log lines reach the table,
    and :meth:`close` at shutdown.
    """

    def __init__(
        self,
        log_writer: PluginLogWriter | None = None,
        cache: PluginCache | None = None,
        storage: PluginStorageAPI | None = None,
        fetch: PluginFetch | None = None,
        capture: PluginCapture | None = None,
        geoip: GeoIPLocator | None = None,
    ) -> None:
        # One Kafka producer (Kafka pipeline only) for log entries and captures.
        producer = MetaProducer()
        self.log_writer = log_writer or PluginLogWriter(producer=producer)
        self.capture = capture or PluginCapture(producer)
        # Public so the MMDB service can swap a fresh database in (GeoIPLocator.use).
        self.geoip = geoip or GeoIPLocator()
        self.fetch = fetch or PluginFetch()
        self._apis: dict[str, object] = {
            "cache": cache or PluginCache(),
            "storage": storage or PluginStorageAPI(),
            "logger": _LoggerAPI(self.log_writer),
            "fetch": self.fetch,
            "posthog": self.capture,
            "jobs": PluginJobs(self.log_writer),
            "geoip": self.geoip,
        }
        self._signatures: dict[tuple[str, str], inspect.Signature] = {}

    def call(self, ctx: PluginContext, api: str, method: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        """Run one meta call for ``ctx``; raises MetaCallError on refusal or failure."""
        if method not in ALLOWED_CALLS.get(api, frozenset()):
            raise MetaCallError(f"meta.{api}.{method} is not available to plugins")
        handler = getattr(self._apis[api], method)
        signature = self._signatures.get((api, method))
        if signature is None:
            signature = self._signatures[(api, method)] = inspect.signature(handler)
        try:
            signature.bind(ctx, *args, **kwargs)
        except TypeError as error:
            raise MetaCallError(f"meta.{api}.{method}(): {error}") from error
        metric = _CALL_METRICS.get((api, method))
        started = time.perf_counter()
        try:
            return handler(ctx, *args, **kwargs)
        except _SERVICE_ERRORS as error:
            logger.exception(
                "meta.%s.%s failed", api, method, extra={"plugin_config_id": ctx.plugin_config_id, "team_id": ctx.team_id}
            )
            raise MetaCallError(f"meta.{api}.{method} failed: {type(error).__name__}") from error
        finally:
            if metric is not None:
                _send_call_metric(metric, (time.perf_counter() - started) * 1000)

    def call_deferred(self, ctx: PluginContext, api: str, method: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Run a fire-and-forget call (``posthog.capture``) after the plugin returned.

        Nobody is waiting for the answer, so a refusal is written to the
        plugin's own log (PLUGIN/ERROR) where its author will see it.
        """
        try:
            self.call(ctx, api, method, args, kwargs)
        except MetaCallError as error:
            logger.warning(
                "deferred meta.%s.%s refused: %s", api, method, error, extra={"plugin_config_id": ctx.plugin_config_id}
            )
            self.write_log(ctx, "PLUGIN", "ERROR", str(error))

    def write_log(self, ctx: PluginContext, source: LogSource, type: LogType, message: str) -> None:
        """Buffer one log entry (the pool's SYSTEM load/unload lines)."""
        self.log_writer.add(LogEntry.for_context(ctx, source, type, message))

    def flush(self) -> None:
        """Write buffered log entries now."""
        self.log_writer.flush()

    def close(self) -> None:
        """Flush and stop background work; the host is not used afterwards."""
        self.log_writer.close()
        self.capture.flush()
        self.fetch.close()
