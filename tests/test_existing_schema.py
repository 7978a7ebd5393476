"""USE_EXISTING_POSTHOG_SCHEMA: migrations never create or alter PostHog's tables."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings

from plugin_server.routers import ExistingSchemaRouter

ROOT = Path(__file__).resolve().parent.parent


def _admin_dsn(database: str) -> str:
    db = settings.DATABASES["default"]
    return f"host={db['HOST'] or 'localhost'} port={db['PORT'] or 5432} user={db['USER'] or 'postgres'} dbname={database}"


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A database of its own, empty, dropped afterwards."""
    name = f"existing_schema_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_admin_dsn("postgres"), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(_admin_dsn("postgres"), autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(database: str) -> set[str]:
    with psycopg.connect(_admin_dsn(database)) as connection:
        rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {row[0] for row in rows}


def _migrate(database: str, existing: bool) -> None:
    db = settings.DATABASES["default"]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings.base",
        "DATABASE_URL": f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{database}",
        "USE_EXISTING_POSTHOG_SCHEMA": "true" if existing else "false",
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)


def test_migrate_on_an_existing_posthog_schema_creates_only_the_servers_own_tables(empty_database: str) -> None:
    """With the setting on, `migrate` creates plugin_server_* and django-q2 tables but no posthog_* table,
    and records the stand-in migration as applied so PostHog's own schema is left to PostHog."""
    _migrate(empty_database, existing=True)
    tables = _tables(empty_database)
    assert "plugin_server_deadletter" in tables and "django_q_schedule" in tables
    assert not {table for table in tables if table.startswith("posthog_")}
    with psycopg.connect(_admin_dsn(empty_database)) as connection:
        applied = connection.execute("SELECT name FROM django_migrations WHERE app = 'posthog_standin'").fetchall()
    migrations = sorted(path.stem for path in (ROOT / "posthog_standin" / "migrations").glob("0*.py"))
    assert sorted(name for (name,) in applied) == migrations


def test_migrate_leaves_existing_posthog_tables_as_they_are(empty_database: str) -> None:
    """A posthog_team that PostHog created (here: with a column the stand-ins do not have) is not altered."""
    _migrate(empty_database, existing=False)
    with psycopg.connect(_admin_dsn(empty_database), autocommit=True) as connection:
        connection.execute("ALTER TABLE posthog_team ADD COLUMN posthog_only_column text")
        connection.execute("DELETE FROM django_migrations WHERE app = 'posthog_standin'")
    _migrate(empty_database, existing=True)
    with psycopg.connect(_admin_dsn(empty_database)) as connection:
        columns = {row[0] for row in connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'posthog_team'"
        ).fetchall()}
    assert "posthog_only_column" in columns


@pytest.mark.parametrize("existing", [True, False])
def test_the_router_speaks_only_for_the_stand_ins(existing: bool, settings: Any) -> None:
    """PostHog's own app (`posthog`) and every other app are left to Django: no veto, whatever the setting."""
    settings.USE_EXISTING_POSTHOG_SCHEMA = existing
    router = ExistingSchemaRouter()
    for label in ("posthog", "auth", "plugin_server", "django_q"):
        assert router.allow_migrate("default", label, model_name="team") is None
    assert router.allow_migrate("default", "posthog_standin", model_name="team") is (False if existing else None)
