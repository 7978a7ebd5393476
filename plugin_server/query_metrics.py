"""``query.postgres`` timings (the original's name) for every statement.

:func:`install_postgres_metrics` adds an execute wrapper to every database
connection of the process (those open now and those Django opens later):
each statement sends ``query.postgres`` (timing) and ``query.postgres.total``
(count), tagged ``queryTag`` = the statement's verb and first table
(``insert.posthog_event``; no colon, which would end a StatsD name), as the original tagged each query by purpose.
The server installs it only when StatsD is on: with metrics off a statement
costs nothing extra.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

from plugin_server.metrics import QUERY_POSTGRES, TOTAL_SUFFIX, get_metrics

_VERB = re.compile(r"\s*(\w+)")
_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE|JOIN)\s+"?(\w+)"?', re.IGNORECASE)


def query_tag(sql: str) -> str:
    """``verb.table`` of a statement (``select.posthog_team``), ``verb`` when no table shows."""
    verb = _VERB.match(sql)
    table = _TABLE.search(sql, 0, 2000)
    tag = verb.group(1).lower() if verb else "unknown"
    return f"{tag}.{table.group(1)}" if table else tag


def _timed_execute(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        tags = {"queryTag": query_tag(sql)}
        metrics = get_metrics()
        metrics.timing(QUERY_POSTGRES, (time.perf_counter() - started) * 1000, tags)
        metrics.incr(QUERY_POSTGRES + TOTAL_SUFFIX, 1, tags)


def _instrument(connection: BaseDatabaseWrapper) -> None:
    if _timed_execute not in connection.execute_wrappers:
        connection.execute_wrappers.append(_timed_execute)


def _on_connection_created(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    _instrument(connection)


def install_postgres_metrics() -> None:
    """Time every statement of this process from now on."""
    connection_created.connect(_on_connection_created, dispatch_uid="plugin_server.query_metrics")
    for connection in connections.all(initialized_only=True):
        _instrument(connection)
