"""The job store's own database (JOB_QUEUE_GRAPHILE_URL) and CRASH_IF_NO_PERSISTENT_JOB_QUEUE, on a real server.

A second database is created on the local Postgres for each test, migrated
with ``migrate --database plugin_jobs`` (only django-q2's tables go there) and
dropped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import psycopg
import pytest
from django.db import connection
from django_q.models import Schedule

from plugin_server.jobs import JOB_FUNCTION, NO_JOB_QUEUE
from plugin_server.models import PluginLogEntry, PluginStorage
from plugin_server.routers import JOB_STORE_DB_ALIAS, JobStoreRouter
from tests.e2e.test_server_e2e import ROOT, send_events, start_server, stored, wait_for  # noqa: F401 -- start_server is a fixture
from tests.factories import create_plugin, create_plugin_config, create_team

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

JOBS_PLUGIN = """
def remember(payload, meta):
    meta.storage.set('ran-' + str(payload), True)

jobs = {'remember': remember}

def process_event(event, meta):
    n = event['properties']['n']
    meta.jobs.remember(n).run_now()
    meta.jobs.remember('later-' + str(n)).run_in(seconds=3600)
    return event
"""
UNREACHABLE = "postgres://postgres@127.0.0.1:1/nothing_here"


def _url(name: str) -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"


@pytest.fixture
def jobs_database(unique_name: str) -> Iterator[str]:
    """A real second database on the local Postgres with django-q2's tables; its URL."""
    name = f"{connection.settings_dict['NAME']}_jobs_{unique_name[-8:]}".lower().replace("-", "_")
    admin = _url("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _url(name)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings.base", "DATABASE_URL": _url(connection.settings_dict["NAME"]),
           "JOB_QUEUE_GRAPHILE_URL": url}
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "--database", JOB_STORE_DB_ALIAS], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _job_rows(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT args FROM django_q_schedule WHERE func = %s", [JOB_FUNCTION])]


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_jobs_live_in_the_database_job_queue_graphile_url_names(
    jobs_database: str, unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    team = create_team()
    config = create_plugin_config(team=team, plugin=create_plugin(organization=team.organization, source=JOBS_PLUGIN))
    # Only django-q2's tables went into the job store.
    assert {"django_q_schedule", "django_q_task", "django_q_ormq"} <= _tables(jobs_database)
    assert not {table for table in _tables(jobs_database) if table.startswith(("posthog_", "plugin_server_"))}
    server = start_server(JOB_QUEUE_GRAPHILE_URL=jobs_database, JOB_POLL_INTERVAL="0.05")
    send_events(unique_name, team, 3)
    wait_for(lambda: stored(team) == 3, 60, "3 stored events", server)
    wait_for(lambda: PluginStorage.objects.filter(plugin_config=config, key__startswith="ran-").count() == 3, 60,
             "the 3 jobs run", server)
    # The jobs due in an hour wait in the job store, not in the main database.
    later = _job_rows(jobs_database)
    assert len(later) == 3 and all("later-" in args for args in later)
    assert not Schedule.objects.using("default").filter(func=JOB_FUNCTION).exists()
    server.terminate()
    assert server.wait(30) == 0


def test_an_unreachable_job_store_stops_the_start_when_crash_is_asked(
    start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    server = start_server(JOB_QUEUE_GRAPHILE_URL=UNREACHABLE, CRASH_IF_NO_PERSISTENT_JOB_QUEUE="true", LOG_LEVEL="error")
    assert server.wait(60) == 1


def test_an_unreachable_job_store_refuses_jobs_and_ingestion_goes_on(
    unique_name: str, start_server: Callable[..., subprocess.Popen[bytes]]
) -> None:
    team = create_team()
    config = create_plugin_config(team=team, plugin=create_plugin(organization=team.organization, source=JOBS_PLUGIN))
    server = start_server(JOB_QUEUE_GRAPHILE_URL=UNREACHABLE, CRASH_IF_NO_PERSISTENT_JOB_QUEUE="false")
    send_events(unique_name, team, 2)
    wait_for(lambda: stored(team) == 2, 60, "2 stored events", server)
    refused = PluginLogEntry.objects.filter(plugin_config_id=config.id, type="ERROR", message__contains=NO_JOB_QUEUE)
    wait_for(lambda: refused.count() >= 2, 30, "the refusals in the plugin's log", server)
    assert "Job remember was not enqueued." in refused.first().message  # type: ignore[union-attr]
    # Nothing fell back to the main database's job store.
    assert not Schedule.objects.using("default").filter(func=JOB_FUNCTION).exists()
    assert not PluginStorage.objects.filter(plugin_config=config).exists()
    server.terminate()
    assert server.wait(30) == 0


def test_the_router_sends_only_the_job_store_to_its_database(settings) -> None:  # type: ignore[no-untyped-def]
    router = JobStoreRouter()
    assert router.db_for_write(Schedule) is None and router.allow_migrate("default", "django_q") is None
    settings.DATABASES = {**settings.DATABASES, JOB_STORE_DB_ALIAS: {**settings.DATABASES["default"]}}
    assert router.db_for_write(Schedule) == JOB_STORE_DB_ALIAS and router.db_for_read(Schedule) == JOB_STORE_DB_ALIAS
    assert router.db_for_write(PluginStorage) is None
    assert router.allow_migrate(JOB_STORE_DB_ALIAS, "django_q") is True
    assert router.allow_migrate("default", "django_q") is False
    assert router.allow_migrate(JOB_STORE_DB_ALIAS, "plugin_server") is False
    assert router.allow_migrate("default", "plugin_server") is None
