"""Poison messages through the real server: `run_plugin_server` fed by Celery's own client.

- Every class of hostile input (issue: poison messages) goes through a
  running server with a plugin: each ends stored or dead-lettered with its
  reason, the events around them are stored, and the server keeps running.
- The kill/restart loop: a message the server dies with (SIGKILLed while the
  plugin workers hold it, as the OOM killer would) comes back after each
  restart, alone; after POISON_MAX_ATTEMPTS deliveries it is dead-lettered
  as ``poison`` without being processed again, saying where the server died;
  every other event is stored exactly once.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import redis

from plugin_server.models import DeadLetter, Event, Team
from tests.e2e import test_server_e2e
from tests.e2e.test_server_e2e import wait_for
from tests.factories import create_plugin, create_plugin_config, create_team
from tests.ingestion.celery_tasks import celery_app, send_event_task, task_args
from tests.ingestion.hostile import deep_event_messages, deep_json, raw_envelope, task_body_text

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

start_server = test_server_e2e.start_server  # the e2e fixture: servers on this test's database and queue

PLUGIN = """
import time

def process_event(event, meta):
    if event["event"] == "hang":
        meta.cache.incr("hanging")
        time.sleep(30)
    event["properties"]["processed"] = True
    return event
"""


def team_with_plugin() -> tuple[Team, int]:
    team = create_team()
    plugin = create_plugin(organization=team.organization, source=PLUGIN)
    create_plugin_config(team=team, plugin=plugin)
    return team, plugin.id


def send(queue: str, *arg_lists: list[Any], priority: int | None = None) -> None:
    with celery_app() as app:
        for args in arg_lists:
            if priority is None:
                send_event_task(app, queue, args)
            else:
                app.send_task("posthog.tasks.process_event.process_event_with_plugins", args=args, queue=queue, priority=priority)


def reasons(queue: str) -> list[str]:
    return sorted(DeadLetter.objects.filter(queue__startswith=queue).values_list("reason", flat=True))


def test_every_class_of_hostile_input_is_contained_by_the_running_server(
    unique_name: str, redis_client: redis.Redis, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """Deep JSON (10,000 and 500 levels, in properties, name, $set, envelope), team ids 2**31 and 2**70,
    distinct ids true and 3.0, a uuid another team stored, priority tasks: all through one server with a
    plugin; the server never exits."""
    team, _ = team_with_plugin()
    other, _ = team_with_plugin()
    server = start_server()
    shared_uuid = "017a0b2c-0000-4000-8000-0000000000aa"
    send(unique_name, task_args({"event": "first", "uuid": shared_uuid, "properties": {}}, team_id=team.id))
    wait_for(lambda: Event.objects.filter(team=team).count() == 1, 60, "the first event", server)
    for levels in (10_000, 500):
        for payload in deep_event_messages(team.id, levels).values():
            redis_client.lpush(unique_name, payload)
    send(
        unique_name,
        task_args({"event": "big team", "properties": {}}, team_id=2**31),
        task_args({"event": "huge team", "properties": {}}, team_id=2**70),
        task_args({"event": "bool id", "properties": {}}, distinct_id=True, team_id=team.id),
        task_args({"event": "float id", "properties": {}}, distinct_id=3.0, team_id=team.id),
        task_args({"event": "reused uuid", "uuid": shared_uuid, "properties": {}}, team_id=other.id),
    )
    send(unique_name, task_args({"event": "urgent", "properties": {}}, team_id=team.id), priority=9)
    wait_for(lambda: len(reasons(unique_name)) == 10, 60, "ten dead letters", server)
    wait_for(lambda: Event.objects.filter(team=team).count() == 4, 30, "the team's four events", server)
    assert reasons(unique_name) == ["invalid_team_id"] * 2 + ["too_deep"] * 8
    assert DeadLetter.objects.filter(reason="invalid_team_id", team_id__isnull=True, queue=unique_name).count() == 2
    assert sorted(Event.objects.filter(team=team).values_list("event", "distinct_id")) == [
        ("bool id", "true"), ("first", "my-id"), ("float id", "3"), ("urgent", "my-id"),
    ]
    assert list(Event.objects.filter(team=other).values_list("event", flat=True)) == ["reused uuid"]
    assert set(Event.objects.filter(team__in=[team, other]).values_list("properties__processed", flat=True)) == {True}
    assert server.poll() is None
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0


def test_an_event_the_worker_hand_off_fails_on_is_that_events_dead_letter(
    unique_name: str, redis_client: redis.Redis, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """With the depth limit raised to 1,000, a 600-level event reaches the plugin workers' boundary, which
    cannot carry it (pickle recurses): it is dead-lettered (or, if the boundary carries it, stored); the
    events around it are stored and the server keeps running."""
    team, _ = team_with_plugin()
    server = start_server(MAX_EVENT_DEPTH="1000")
    send(unique_name, task_args({"event": "before", "properties": {}}, team_id=team.id))
    redis_client.lpush(unique_name, raw_envelope(task_body_text(f'{{"event": "deep", "properties": {{"x": {deep_json(600)}}}}}', str(team.id))))
    send(unique_name, task_args({"event": "after", "properties": {}}, team_id=team.id))
    wait_for(lambda: Event.objects.filter(team=team, event__in=["before", "after"]).count() == 2, 60, "the events around it", server)
    wait_for(lambda: len(reasons(unique_name)) + Event.objects.filter(team=team, event="deep").count() == 1, 30, "the deep event's fate", server)
    # Today the boundary pickles (it cannot carry 600 levels); a plain-data boundary may carry it.
    assert reasons(unique_name) in (["plugins_failed"], [])
    assert server.poll() is None
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0


def test_a_message_the_server_dies_with_three_times_is_quarantined_as_poison(
    unique_name: str, redis_client: redis.Redis, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """SIGKILL while the plugin holds "hang", restart, three times: the fourth server dead-letters it as
    poison (unprocessed, "last seen handing the event to the plugin workers (delivery 3)"); the ten other
    events sent with it are stored exactly once; the fourth server keeps consuming."""
    team, plugin_id = team_with_plugin()
    hanging = f"@plugin/{plugin_id}/{team.id}/hanging"
    redis_client.delete(hanging)  # ids repeat across test runs; Redis outlives the test database
    send(unique_name, *[task_args({"event": "neighbour", "properties": {"n": n}}, distinct_id=f"n{n}", team_id=team.id) for n in range(5)])
    send(unique_name, task_args({"event": "hang", "properties": {}}, team_id=team.id))
    send(unique_name, *[task_args({"event": "neighbour", "properties": {"n": n}}, distinct_id=f"n{n}", team_id=team.id) for n in range(5, 10)])
    env = {"TASK_TIMEOUT": "60", "CELERY_CONSUMER_HEARTBEAT_TTL": "2", "POISON_MAX_ATTEMPTS": "3"}
    for delivery in (1, 2, 3):
        server = start_server(**env)
        wait_for(lambda: int(redis_client.get(hanging) or 0) == delivery, 90, f"delivery {delivery} in the plugin", server)
        server.kill()
        server.wait(10)
    server = start_server(**env)
    wait_for(lambda: reasons(unique_name) == ["poison"], 90, "the poison dead letter", server)
    letter = DeadLetter.objects.get(queue=unique_name)
    assert "delivered 4 times" in letter.error and "handing the event to the plugin workers (delivery 3)" in letter.error
    assert b"hang" in base64.b64decode(json.loads(bytes(letter.payload))["body"])  # the raw message, for replay
    wait_for(lambda: Event.objects.filter(team=team).count() == 10, 60, "the ten neighbours", server)
    send(unique_name, task_args({"event": "later", "properties": {}}, team_id=team.id))
    wait_for(lambda: Event.objects.filter(team=team, event="later").exists(), 30, "an event after the quarantine", server)
    assert int(redis_client.get(hanging) or 0) == 3  # never processed a fourth time
    assert sorted(Event.objects.filter(team=team, event="neighbour").values_list("distinct_id", flat=True)) == sorted(f"n{n}" for n in range(10))
    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    assert redis_client.hlen(f"@posthog-plugin-server/celery/{unique_name}/attempts") == 0
