"""The app inside a host shaped like PostHog's monolith (tests/host): it loads, migrates, serves its admin and ingests.

Every step runs ``python -m django`` in a subprocess with the host's
settings (``DJANGO_SETTINGS_MODULE=posthog.settings``) and two databases of
its own (PostHog's default and persons databases), created here and dropped
afterwards, so the suite's own test database is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from celery import Celery
from confluent_kafka import Consumer
from django.conf import settings

from plugin_server.clickhouse.messages import SESSION_RECORDING_EVENTS_TOPIC
from plugin_server.events import CELERY_TASK_NAME

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "tests" / "host"


def _dsn(database: str) -> str:
    db = settings.DATABASES["default"]
    return f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER'] or 'postgres'} dbname={database}"


def _rows(database: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(_dsn(database)) as connection:
        return connection.execute(sql, params).fetchall()


def _tables(database: str) -> set[str]:
    return {row[0] for row in _rows(database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


class Host:
    """The host project's environment and its two databases."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.database = f"host_{suffix}"
        self.persons_database = f"host_persons_{suffix}"
        self.queue = f"host-queue-{suffix}"
        db = settings.DATABASES["default"]
        # Only what the host needs and the app's own settings from the
        # environment (the host's settings module defines none of them).
        self.env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": os.pathsep.join([str(HOST), str(ROOT)]),
            "DJANGO_SETTINGS_MODULE": "posthog.settings",
            "HOST_DATABASE_NAME": self.database,
            "HOST_PERSONS_DATABASE_NAME": self.persons_database,
            "HOST_DATABASE_HOST": str(db["HOST"] or "127.0.0.1"),
            "HOST_DATABASE_PORT": str(db["PORT"] or 5432),
            "HOST_DATABASE_USER": str(db["USER"] or "postgres"),
            "REDIS_URL": settings.REDIS_URL,
            "KAFKA_HOSTS": str(settings.KAFKA_HOSTS or "127.0.0.1:9092"),
            "PLUGINS_CELERY_QUEUE": self.queue,
            "BASE_DIR": str(ROOT),
            "WORKER_CONCURRENCY": "1",
            "USE_EXISTING_POSTHOG_SCHEMA": "true",
        }

    def django(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "django", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def run(self, *args: str) -> str:
        result = self.django(*args)
        assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
        return result.stdout

    def scenario(self, name: str) -> Any:
        output = self.run("shell", "-c", f"import host_scenarios; host_scenarios.{name}()")
        return json.loads(output.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    """A migrated host with the demo data (setup_demo); its databases are dropped afterwards."""
    host = Host()
    with psycopg.connect(_dsn("postgres"), autocommit=True) as connection:
        for name in (host.database, host.persons_database):
            connection.execute(f'CREATE DATABASE "{name}"')
    try:
        host.run("migrate", "--noinput")
        host.run("migrate", "--noinput", "--database", "persons_db_writer")
        host.run("setup_demo")
        yield host
    finally:
        with psycopg.connect(_dsn("postgres"), autocommit=True) as connection:
            for name in (host.database, host.persons_database):
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_check_passes_in_the_host(host: Host) -> None:
    result = host.django("check")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_django_q_listed_before_the_app_is_warned_about(host: Host) -> None:
    """django-q2 reads Q_CLUSTER when it loads: listed first, it misses the app's default (plugin_server.W002)."""
    host.env["HOST_DJANGO_Q_FIRST"] = "1"
    try:
        result = host.django("check")
    finally:
        del host.env["HOST_DJANGO_Q_FIRST"]
    assert "plugin_server.W002" in result.stderr + result.stdout


def test_migrate_applies_every_host_migration_and_creates_its_tables(host: Host) -> None:
    """PostHog's own migrations run for real (not faked), even with the plugin server's router and
    USE_EXISTING_POSTHOG_SCHEMA on: the person tables in the persons database, the rest in default."""
    plan = host.run("showmigrations", "posthog", "plugin_server")
    assert "[X] 0001_initial" in plan and "[ ]" not in plan
    default_tables, persons_tables = _tables(host.database), _tables(host.persons_database)
    assert {"posthog_team", "posthog_plugin", "posthog_pluginconfig", "posthog_pluginstorage", "posthog_event",
            "posthog_user", "plugin_server_deadletter", "django_q_schedule"} <= default_tables
    assert {"posthog_person", "posthog_persondistinctid", "posthog_cohortpeople"} <= persons_tables
    assert "posthog_person" not in default_tables
    assert not any(table.startswith("posthog_standin") for table in default_tables)


def test_models_come_from_posthogs_modules_and_settings_from_the_app(host: Host) -> None:
    seen = host.scenario("resolved_models")
    assert seen["modules"]["PluginStorage"] == "posthog.models.plugin"  # not exported by posthog.models
    assert seen["modules"]["Person"] == "posthog.models.person.person"
    assert seen["modules"]["Event"] == "posthog.models.event.event"
    assert seen["modules"]["Team"] == "posthog.models.team.team"
    assert seen["missing"] == ["PluginLogEntry", "SessionRecordingEvent"]  # a dataclass; gone
    assert seen["persons_alias"] == "persons_db_writer"
    # The host defines none of the server's settings: the app's defaults, the environment's values.
    assert seen["settings"] == {"WEB_PORT": 3008, "PLUGINS_CELERY_QUEUE": host.queue, "TASK_TIMEOUT": 30.0}
    assert seen["on_django_settings"] is True
    assert seen["user_model"] == "posthog.User"


def test_admin_pages_work_with_posthogs_user_model(host: Host) -> None:
    """setup_demo made an email-login superuser (posthog.User); every page of the app's admin answers 200."""
    seen = host.scenario("admin_pages")
    assert seen["logged_in"] is True
    assert seen["statuses"] == {name: 200 for name in seen["statuses"]}
    assert {"plugin_changelist", "pluginconfig_change", "user_changelist"} <= seen["statuses"].keys()
    assert seen["config_page_has_greeting"] is True


@pytest.mark.redis
def test_the_admin_adds_a_plugin_and_a_config_to_the_hosts_tables(host: Host) -> None:
    """The admin's forms save into PostHog's tables (today's columns: order NOT NULL, deleted, filters, ...)."""
    seen = host.scenario("admin_adds_a_plugin_and_a_config")
    assert (seen["plugin_status"], seen["config_status"]) == (302, 302), seen
    assert seen["config"] == {"enabled": True, "order": 5, "deleted": False}


def _send_events(host: Host, events: list[tuple[str, dict[str, Any]]]) -> None:
    """(distinct id, event) pairs as Celery tasks, as PostHog's capture sends them."""
    app = Celery("host-test-producer", broker=settings.REDIS_URL)
    team_id = _rows(host.database, "SELECT id FROM posthog_team WHERE api_token = 'phc_demo_plugin_server_token'")[0][0]
    try:
        for distinct_id, data in events:
            args = [distinct_id, "127.0.0.1", "http://localhost", data, team_id, datetime.now(timezone.utc).isoformat(), None]
            app.send_task(CELERY_TASK_NAME, args=args, queue=host.queue)
    finally:
        app.close()


def _wait(server: subprocess.Popen[bytes], what: str, done: Any) -> None:
    deadline = time.monotonic() + 120
    while not done():
        assert server.poll() is None, f"the server exited with {server.returncode}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _person_rows(host: Host, distinct_id: str) -> list[tuple[Any, ...]]:
    """(person id, person version, distinct id version, properties) of a distinct id, in the persons database."""
    return _rows(
        host.persons_database,
        "SELECT p.id, p.version, pdi.version, p.properties FROM posthog_person p"
        " JOIN posthog_persondistinctid pdi ON pdi.person_id = p.id WHERE pdi.distinct_id = %s",
        (distinct_id,),
    )


def _recording_on_kafka(kafka_consumer_config: dict[str, object], session_id: str) -> dict[str, Any]:
    """The clickhouse_session_recording_events message of this session (the host has no recordings table)."""
    consumer = Consumer(kafka_consumer_config)
    consumer.subscribe([SESSION_RECORDING_EVENTS_TOPIC])
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            value = json.loads(message.value())
            if value.get("session_id") == session_id:
                return dict(value)
    finally:
        consumer.close()
    raise AssertionError("the recording was not produced to Kafka")


@pytest.mark.redis
@pytest.mark.kafka
def test_run_plugin_server_ingests_a_celery_task_into_the_hosts_tables(host: Host, kafka_consumer_config: dict[str, object]) -> None:
    """The demo plugin runs on the event; the person lands in the persons database with PostHog's version
    column (0 when created, counted up by a merge and an update), the event and its definitions (type on
    property definitions) in default, the recording (no table for it in today's PostHog) on Kafka. Configs of today's PostHog that cannot run as they are
    (event filters, deleted, inline) are refused or skipped."""
    edge = host.scenario("add_edge_configs")
    suffix = uuid.uuid4().hex[:8]
    distinct_id, other_id, session_id = f"visitor-{suffix}", f"user-{suffix}", f"session-{suffix}"
    _send_events(
        host,
        [
            (distinct_id, {"event": "$pageview", "properties": {"price": 3}}),
            (distinct_id, {"event": "$snapshot", "properties": {"$session_id": session_id, "$snapshot_data": {"type": 2}}}),
            (other_id, {"event": "$pageview", "properties": {}}),
        ],
    )
    server = subprocess.Popen([sys.executable, "-m", "django", "run_plugin_server"], cwd=ROOT, env=host.env)
    try:
        _wait(server, "both persons", lambda: _person_rows(host, distinct_id) and _person_rows(host, other_id))
        assert [row[1:3] for row in _person_rows(host, distinct_id)] == [(0, 0)]
        (first_person, *_), (other_person, *_) = _person_rows(host, distinct_id)[0], _person_rows(host, other_id)[0]
        # The visitor identifies as the user: the two persons merge in the persons database.
        _send_events(host, [(other_id, {"event": "$identify", "properties": {"$anon_distinct_id": distinct_id, "$set": {"plan": "pro"}}})])
        _wait(server, "the merge", lambda: [row[0] for row in _person_rows(host, distinct_id)] == [other_person])
        _wait(server, "the event", lambda: _rows(host.database, "SELECT 1 FROM posthog_event WHERE distinct_id = %s", (distinct_id,)))
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0
    ((_, person_version, moved_version, person_properties),) = _person_rows(host, distinct_id)
    assert moved_version == 1 and person_version >= 1 and person_properties == {"plan": "pro"}
    assert not _rows(host.persons_database, "SELECT 1 FROM posthog_person WHERE id = %s", (first_person,))
    ((properties,),) = _rows(host.database, "SELECT properties FROM posthog_event WHERE distinct_id = %s", (distinct_id,))
    assert properties["greeting"] == "Hello from the demo plugin"
    assert not {"filtered", "deleted", "inline"} & properties.keys()
    definitions = dict(_rows(host.database, "SELECT name, type FROM posthog_propertydefinition"))
    assert definitions["price"] == 1
    recording = _recording_on_kafka(kafka_consumer_config, session_id)
    assert (recording["distinct_id"], json.loads(recording["snapshot_data"])) == (distinct_id, {"type": 2})
    errors = host.scenario("config_errors")
    assert "event filters" in errors[str(edge["filtered"])]["message"]
    assert "inline plugin" in errors[str(edge["inline"])]["message"]
    assert errors[str(edge["deleted"])] is None
