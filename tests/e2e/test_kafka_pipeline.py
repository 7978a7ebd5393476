"""`run_plugin_server` with KAFKA_ENABLED as subprocesses, a real broker, the ClickHouse writer, ClickHouse.

- SIGKILL mid-stream, then restart: every event reaches ClickHouse, the read
  model (``FINAL``) shows each once, and every person's ``$increment`` was
  applied once per event (Postgres, mirrored to ClickHouse).
- Two servers in one consumer group share the partitions; killing one
  (SIGKILL) and stopping another (SIGTERM) hands their partitions over:
  nothing lost, nothing doubled in the read model.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest

from plugin_server.models import Person, Team
from tests.factories import create_plugin, create_plugin_config, create_team
from tests.kafka_helpers import capture_message, produce
from tests.kafka_pipeline import KafkaPipeline, kafka_pipeline  # noqa: F401 -- the fixture
from tests.manage_process import ServerProcesses, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.redis,
    pytest.mark.kafka,
    pytest.mark.clickhouse,
    pytest.mark.slow,
]

PLUGIN = """
def process_event(event, meta):
    event["properties"]["processed"] = "hell yes"
    return event
"""
USERS = 100


@pytest.fixture
def team() -> Team:
    team = create_team(ingested_event=True)
    create_plugin_config(team=team, plugin=create_plugin(organization=team.organization, source=PLUGIN))
    return team


@pytest.fixture
def start_server(kafka_pipeline: KafkaPipeline) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    servers = ServerProcesses()

    def start(**env: str) -> subprocess.Popen[bytes]:
        return servers.start(kafka_pipeline.server_environment(**env), "--mode", "ingestion")

    yield start
    servers.kill_all()


def send(pipeline: KafkaPipeline, team: Team, first: int, count: int) -> None:
    """Events ``first .. first+count-1`` of USERS people, each incrementing its person's ``seen``."""
    messages = [
        capture_message(team.id, f"user-{index % USERS}", "e2e", {"n": index, "$increment": {"seen": 1}}) for index in range(first, first + count)
    ]
    produce(pipeline.bootstrap, pipeline.consumption_topic, messages)


def in_clickhouse(pipeline: KafkaPipeline, team: Team) -> int:
    return int(pipeline.client.execute(f"SELECT count() FROM events FINAL WHERE team_id = {team.id}")[0][0])


def assert_each_event_once_and_persons_exact(pipeline: KafkaPipeline, team: Team, total: int) -> None:
    events = pipeline.events(team.id)
    assert len(events) == total
    assert sorted(event["properties"]["n"] for event in events) == list(range(total))
    assert {event["properties"]["processed"] for event in events} == {"hell yes"}
    # Persons were touched once per event (a re-delivered event is not applied twice) ...
    expected = {f"user-{user}": len(range(user, total, USERS)) for user in range(USERS)}
    persons = {str(p.uuid): p.properties.get("seen") for p in Person.objects.filter(team_id=team.id)}
    distinct_ids = pipeline.distinct_ids(team.id)
    assert {distinct_id: persons[person] for distinct_id, person in distinct_ids.items()} == expected
    # ... and ClickHouse holds the same persons as Postgres.
    wait_for(
        lambda: {uuid: person["properties"].get("seen") for uuid, person in pipeline.persons(team.id).items()} == persons,
        30,
        "ClickHouse persons equal to Postgres's",
    )


def test_after_a_sigkill_mid_stream_every_event_reaches_clickhouse_once(
    team: Team, kafka_pipeline: KafkaPipeline, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    total = 4000
    send(kafka_pipeline, team, 0, total)
    first = start_server()
    wait_for(lambda: in_clickhouse(kafka_pipeline, team) > 0, 90, "the first events in ClickHouse", first)
    first.kill()
    first.wait(10)
    assert in_clickhouse(kafka_pipeline, team) < total, "the server finished before it could be killed; send more events"
    second = start_server()
    wait_for(lambda: in_clickhouse(kafka_pipeline, team) >= total, 180, f"{total} events in ClickHouse", second)
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert_each_event_once_and_persons_exact(kafka_pipeline, team, total)


def test_two_servers_share_the_partitions_and_hand_them_over_when_one_is_killed_or_stopped(
    team: Team, kafka_pipeline: KafkaPipeline, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """Two servers share the 4 partitions; one SIGKILLed mid-stream, a third joins, the second is SIGTERMed."""
    first, second = start_server(), start_server()
    send(kafka_pipeline, team, 0, 4000)
    wait_for(lambda: in_clickhouse(kafka_pipeline, team) > 0, 90, "the first events in ClickHouse", first)
    first.kill()
    first.wait(10)
    wait_for(lambda: in_clickhouse(kafka_pipeline, team) >= 4000, 180, "4000 events in ClickHouse", second)
    third = start_server()
    send(kafka_pipeline, team, 4000, 2000)
    wait_for(lambda: in_clickhouse(kafka_pipeline, team) > 4000, 90, "the next events", second)
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    wait_for(lambda: in_clickhouse(kafka_pipeline, team) >= 6000, 180, "6000 events in ClickHouse", third)
    third.send_signal(signal.SIGTERM)
    assert third.wait(30) == 0
    assert_each_event_once_and_persons_exact(kafka_pipeline, team, 6000)
