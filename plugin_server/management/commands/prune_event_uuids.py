"""``./manage.py prune_event_uuids [--older-than-hours H] [--chunk N]``: forget old event uuids.

``plugin_server_ingestedeventuuid`` remembers the uuid of every stored event
so that a re-delivered event is stored once. Re-delivery happens within
minutes (a consumer that died, a retried batch), so uuids older than a few
days can go. Run this daily (cron, or the scheduler); it deletes in chunks of
``--chunk`` rows, each its own short transaction, so ingestion is never held
up by one long delete.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection, transaction

# The oldest rows sit at the start of the table (it is append-mostly), so the
# scan behind LIMIT finds them early without an index on created_at.
_DELETE_CHUNK = (
    "DELETE FROM plugin_server_ingestedeventuuid WHERE ctid = ANY(ARRAY("
    "SELECT ctid FROM plugin_server_ingestedeventuuid WHERE created_at < now() - make_interval(hours => %s) LIMIT %s))"
)


class Command(BaseCommand):
    help = "Delete the uuids of events stored more than --older-than-hours ago (idempotency window)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than-hours", type=int, default=72, help="keep this many hours of uuids (default 72)")
        parser.add_argument("--chunk", type=int, default=10_000, help="rows deleted per transaction (default 10000)")

    def handle(self, *args: Any, **options: Any) -> None:
        hours, chunk = max(options["older_than_hours"], 1), max(options["chunk"], 1)
        total = 0
        while True:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(_DELETE_CHUNK, [hours, chunk])
                deleted = cursor.rowcount
            total += deleted
            if deleted < chunk:
                break
        self.stdout.write(f"deleted {total} event uuids older than {hours} hours")
