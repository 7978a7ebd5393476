"""INGESTION_PROCESSES=2 with KAFKA_ENABLED: both ingestion processes join the consumer group (no router).

Every event reaches ClickHouse once and every person's ``$increment`` is
applied once per event; SIGTERM stops the server and both processes with exit 0.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable


from plugin_server.models import Team
from tests.e2e.test_ingestion_processes import _alive, ingestion_processes
from tests.e2e.test_kafka_pipeline import (  # noqa: F401 -- start_server and team are fixtures
    assert_each_event_once_and_persons_exact,
    in_clickhouse,
    pytestmark,
    send,
    start_server,
    team,
)
from tests.kafka_pipeline import KafkaPipeline, kafka_pipeline  # noqa: F401 -- the fixture
from tests.manage_process import wait_for



def test_two_ingestion_processes_in_the_group_store_every_event_once(
    team: Team, kafka_pipeline: KafkaPipeline, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    total = 2000
    server = start_server(INGESTION_PROCESSES="2")
    wait_for(lambda: len(ingestion_processes(server)) == 2, 60, "two ingestion processes", server)
    children = ingestion_processes(server)
    send(kafka_pipeline, team, 0, total)
    wait_for(lambda: in_clickhouse(kafka_pipeline, team) >= total, 180, f"{total} events in ClickHouse", server)
    assert sorted(ingestion_processes(server)) == sorted(children), "an ingestion process was restarted"
    server.send_signal(signal.SIGTERM)
    assert server.wait(60) == 0
    assert not any(_alive(pid) for pid in children)
    assert_each_event_once_and_persons_exact(kafka_pipeline, team, total)
