"""Deleting persons from ClickHouse, as the Kafka pipeline's person logic does after Postgres.

The original ran, over HTTP, ``ALTER TABLE person DELETE WHERE id = '<uuid>'``
and ``ALTER TABLE person_distinct_id DELETE WHERE person_id = '<uuid>'``
for each deleted person. Here the same mutations go over the native protocol
(clickhouse-driver, CLICKHOUSE_* settings, TLS under CLICKHOUSE_SECURE), one
per table for a whole batch of persons (``IN (...)``).

A mutation is asynchronous on the server and applies to the rows present
when it starts: a ``clickhouse_person`` message of the deleted person that
the writer inserts later brings it back. Call :func:`delete_persons` once
the batch's person messages are acknowledged by the broker (and expect the
writer's lag to matter). Later versions of PostHog replaced these mutations
by ``is_deleted`` rows; the tables have that column (docs/clickhouse.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from plugin_server.clickhouse.client import make_client
from plugin_server.clickhouse.schema import check_identifier, quote
from plugin_server.config import get_config
from plugin_server.metrics import QUERY_CLICKHOUSE, TOTAL_SUFFIX, get_metrics

if TYPE_CHECKING:
    from clickhouse_driver import Client

_lock = threading.Lock()
_client: Client | None = None


def delete_person_statements(person_uuids: Sequence[str], database: str) -> list[str]:
    """The two mutations deleting these persons and their distinct ids (none for no persons)."""
    if not person_uuids:
        return []
    check_identifier(database)
    listed = ", ".join(quote(uuid) for uuid in person_uuids)
    return [
        f"ALTER TABLE {database}.person DELETE WHERE id IN ({listed})",
        f"ALTER TABLE {database}.person_distinct_id DELETE WHERE person_id IN ({listed})",
    ]


def _shared_client() -> Client:
    global _client
    if _client is None:
        _client = make_client(get_config())
    return _client


@receiver(setting_changed)
def _drop_client(**kwargs: Any) -> None:
    # A changed CLICKHOUSE_* setting (tests' override_settings) means a new client.
    global _client
    with _lock:
        if _client is not None:
            _client.disconnect()
        _client = None


def delete_persons(person_uuids: Sequence[str], client: Client | None = None, database: str | None = None) -> None:
    """Delete the persons and their distinct ids from ClickHouse; raises on a ClickHouse error.

    Without ``client``, one process-wide client on the CLICKHOUSE_* settings
    is used (made on first use, one statement at a time)."""
    database = database or (client.connection.database if client is not None else None) or get_config().clickhouse_database
    statements = delete_person_statements(person_uuids, database or "default")
    if not statements:
        return
    with _lock:
        target = client or _shared_client()
        for statement in statements:
            started = time.perf_counter()
            target.execute(statement)
            get_metrics().timing(QUERY_CLICKHOUSE, (time.perf_counter() - started) * 1000)
            get_metrics().incr(QUERY_CLICKHOUSE + TOTAL_SUFFIX)


def check_connection(client: Client | None = None) -> None:
    """``SELECT 1`` on ClickHouse, as the original did at startup; raises when it does not answer."""
    with _lock:
        (client or _shared_client()).execute("SELECT 1")
