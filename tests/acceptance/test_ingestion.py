"""acceptance.md lines on ingestion that the unit suites leave open (see tests/acceptance_index.md).

- "Queue": pause and resume of the running consumer loop, in real time, with
  the original's time bounds.
- "Postgres-only" element group: raw elements carrying an irrelevant key.
- "Team manager" does not capture event: a team that already ingested
  reports nothing.
- "Utilities" UUID from 16 bytes and UUID toString.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.elements import extract_elements
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.sources.celery import CelerySource
from plugin_server.ingestion.teams import TeamInfo
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.models import Element as ElementRow, Event
from plugin_server.sinks.postgres import PostgresSink
from tests.factories import create_team, store_element_group
from tests.ingestion.celery_tasks import celery_app, send_event_task, task_args


def wait_until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Bounded polling: the loop runs on its own thread, in real time."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def running_consumer(unique_name: str) -> Iterator[Consumer]:
    """Consumer.run() on a thread over this test's queue; stopped and joined at the end."""
    source = CelerySource(queue=unique_name)
    source.start()
    options = ConsumerOptions.from_settings(poll_timeout=0.05, batch_size=1, retry_backoff=0.0, retry_backoff_max=0.0)
    consumer = Consumer(source, Ingester(), pool=None, options=options)
    consumer.pause()
    thread = threading.Thread(target=consumer.run, name="acceptance-consumer")
    thread.start()
    yield consumer
    consumer.stop()
    thread.join(10)
    source.close()
    assert not thread.is_alive()


@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_pause_and_resume_queue(running_consumer: Consumer, unique_name: str, redis_client: redis.Redis) -> None:
    """6 tasks: the running consumer takes some; paused, the list length holds for 200 ms; resumed, it is empty within 500 ms."""
    team = create_team()
    with celery_app() as app:
        for _ in range(6):
            send_event_task(app, unique_name, task_args({"event": "$pageview", "properties": {}}, distinct_id="my-id", team_id=team.id))
    running_consumer.resume()
    wait_until(lambda: redis_client.llen(unique_name) < 6, 5, "the consumer to take a message")
    running_consumer.pause()
    # A batch being taken when pause() is called is finished: let at most that one land.
    time.sleep(0.2)
    length = redis_client.llen(unique_name)
    assert length > 0, "the consumer emptied the queue before it could be paused; send more events"
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        assert redis_client.llen(unique_name) == length
        time.sleep(0.01)
    running_consumer.resume()
    wait_until(lambda: redis_client.llen(unique_name) == 0, 0.5, "an empty queue")
    wait_until(lambda: Event.objects.filter(team=team).count() == 6, 5, "6 stored events")


@pytest.mark.django_db
def test_element_group_ignores_irrelevant_keys_and_is_per_team() -> None:
    """Two raw elements make 2 rows; the same list again (one carrying an extra `event` key) adds none
    and has the same hash; for a new team 2 more rows with the same hash."""
    team = create_team()
    raw = [{"tag_name": "button", "$el_text": "Sign up!"}, {"tag_name": "div"}]
    first_hash = store_element_group(PostgresSink(), team.id, extract_elements(raw) or [])
    assert sorted(ElementRow.objects.filter(group__team=team).values_list("tag_name", "text")) == [("button", "Sign up!"), ("div", None)]
    again = [raw[0], {**raw[1], "event": {"event": "$autocapture", "properties": {}}}]
    assert store_element_group(PostgresSink(), team.id, extract_elements(again) or []) == first_hash
    assert ElementRow.objects.count() == 2
    other = create_team()
    assert store_element_group(PostgresSink(), other.id, extract_elements(raw) or []) == first_hash
    assert ElementRow.objects.count() == 4


class RecordingTelemetry:
    """Keeps every first-event report."""

    def __init__(self) -> None:
        self.reports: list[tuple[TeamInfo, dict[str, Any]]] = []

    def first_team_event(self, team: TeamInfo, properties: dict[str, Any]) -> None:
        self.reports.append((team, properties))


@pytest.mark.django_db
def test_a_team_that_already_ingested_reports_no_first_event() -> None:
    """Team manager "does not capture event": ingested_event already true → no telemetry at all."""
    team = create_team(ingested_event=True)
    telemetry = RecordingTelemetry()
    ingester = Ingester(persons=PersonManager(lru_size=10), telemetry=telemetry)
    event = {"event": "new-event", "distinct_id": "d", "team_id": team.id, "uuid": str(uuidt()), "properties": {},
             "ip": None, "site_url": "", "now": "2021-05-01T00:00:00Z", "sent_at": None}
    result = ingester.ingest([event])
    assert not result.invalid and len(result.stored) == 1
    assert telemetry.reports == []


def test_uuid_from_16_bytes_and_its_text() -> None:
    """16 bytes are taken as they are (also random ones); the text is 36 lower-case characters of them."""
    given = bytes.fromhex("99abcdef123443210000dcba87654321")
    assert uuid.UUID(bytes=given).bytes == given
    random_bytes = os.urandom(16)
    assert uuid.UUID(bytes=random_bytes).bytes == random_bytes
    text = str(uuid.UUID("99aBcDeF-1234-4321-0000-dcba87654321"))
    assert (len(text), text) == (36, "99abcdef-1234-4321-0000-dcba87654321")
    generated = uuidt.text()
    assert len(generated) == 36 and generated == generated.lower()
