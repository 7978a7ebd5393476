"""Two servers ingesting at once: nothing stored twice, nothing lost, no error (real transactions, threads)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection

from plugin_server.ingestion.ingester import Ingester, IngestResult
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.models import ElementGroup, Event, EventDefinition, Person, PersonDistinctId, PropertyDefinition
from tests.factories import create_team
from tests.ingestion.test_process_event import RecordingTelemetry

pytestmark = pytest.mark.django_db(transaction=True)

SERVERS = 4


def shared_events(team_ids: list[int], count: int) -> list[dict[str, Any]]:
    """Events every server receives (a re-delivery race): same uuids, persons, groups and definitions."""
    return [
        {
            "event": f"event-{number % 5}",
            "distinct_id": f"user-{number % 13}",
            "team_id": team_ids[number % len(team_ids)],
            "uuid": str(uuidt()),
            "properties": {
                f"p{number % 7}": number,
                "$set": {"last": number},
                "$elements": [{"tag_name": "a", "nth_child": number % 4}],
            },
        }
        for number in range(count)
    ]


def test_servers_racing_on_the_same_batches_store_everything_once() -> None:
    """4 servers ingest the same 3 batches (in different orders) at once: every event once, one group per hash,
    one definition per name, one person per distinct id, one first-event report per team, no exception."""
    teams = [create_team(ingested_event=False) for _ in range(3)]
    batches = [shared_events([team.id for team in teams], 120) for _ in range(3)]
    results: list[IngestResult] = []
    errors: list[BaseException] = []
    start = threading.Barrier(SERVERS)
    telemetry = RecordingTelemetry()

    def server(number: int) -> None:
        ingester = Ingester(persons=PersonManager(lru_size=1000), telemetry=telemetry)
        try:
            start.wait(timeout=30)
            for batch in batches[number % 3 :] + batches[: number % 3]:
                results.append(ingester.ingest(batch))
        except BaseException as error:  # noqa: BLE001 -- reported by the test below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=server, args=(number,)) for number in range(SERVERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert all(not result.invalid for result in results)
    every_uuid = sorted(event["uuid"] for batch in batches for event in batch)
    assert sorted(uuid for result in results for uuid in result.stored) == every_uuid
    assert sum(len(result.duplicates) for result in results) == (SERVERS - 1) * len(every_uuid)
    assert Event.objects.filter(team__in=teams).count() == len(every_uuid)
    assert ElementGroup.objects.filter(team__in=teams).count() == 4 * len(teams)
    assert EventDefinition.objects.filter(team__in=teams).count() == 5 * len(teams)
    assert PropertyDefinition.objects.filter(team__in=teams).count() == (7 + 1) * len(teams)  # p0..p6 and $set
    distinct_ids = PersonDistinctId.objects.filter(team__in=teams)
    assert distinct_ids.count() == len({(event["team_id"], event["distinct_id"]) for batch in batches for event in batch})
    assert Person.objects.filter(team__in=teams).count() == distinct_ids.count()
    assert sorted(team.id for team, _ in telemetry.reports) == sorted(team.id for team in teams)
