"""A separate server process for the two-process person tests.

Run as ``python -m tests.ingestion.person_worker TEAM_ID TAG BATCHES`` with
DATABASE_URL naming the test database: it prints ``ready``, waits for a line
on stdin (so that both processes start together), then applies BATCHES
batches of ``$set`` + ``$increment`` events of the users ``user-0`` …
``user-19``, each in its own transaction, as an ingesting server would.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    team_id, tag, batches = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings.test")
    import django

    django.setup()
    from datetime import datetime, timezone

    from django.db import transaction

    from plugin_server.ingestion.persons import PersonManager, PersonUpdate
    from plugin_server.ingestion.uuidt import uuidt

    manager = PersonManager(lru_size=1000)
    sent_at = datetime(2021, 5, 17, 10, 0, tzinfo=timezone.utc)
    print("ready", flush=True)
    sys.stdin.readline()
    for batch in range(batches):
        updates = [
            PersonUpdate(
                team_id,
                f"user-{i % 20}",
                "$pageview",
                {"$set": {"last": f"{tag}-{batch}-{i}"}, "$increment": {"n": 1}},
                sent_at,
                uuidt.text(),
            )
            for i in range(40)
        ]
        with transaction.atomic():
            manager.apply(updates)
    print("done", flush=True)


if __name__ == "__main__":
    main()
