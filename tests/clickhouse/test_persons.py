"""Person deletes in ClickHouse (spec §4.5) over clickhouse-driver, on the real server."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from io import StringIO
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.core.management import call_command
from django.test import override_settings

from plugin_server.clickhouse import messages
from plugin_server.clickhouse.client import client_options, make_client
from plugin_server.clickhouse.persons import check_connection, delete_person_statements, delete_persons
from plugin_server.clickhouse.schema import escape_clickhouse_string
from plugin_server.config import get_config

if TYPE_CHECKING:
    from clickhouse_driver import Client

MOMENT = datetime(2021, 5, 17, 9, 59, 59, tzinfo=timezone.utc)


def test_escape_clickhouse_string() -> None:
    assert escape_clickhouse_string("insert'escape \\") == "insert\\'escape \\\\"


def test_statements_name_every_person_once_per_table() -> None:
    first, second = "017978f1-0000-0000-0000-000000000001", "017978f1-0000-0000-0000-000000000002"
    assert delete_person_statements([first, second], "posthog") == [
        f"ALTER TABLE posthog.person DELETE WHERE id IN ('{first}', '{second}')",
        f"ALTER TABLE posthog.person_distinct_id DELETE WHERE person_id IN ('{first}', '{second}')",
    ]
    assert delete_person_statements([], "posthog") == []


def _insert(client: Client, table: str, columns: tuple[str, ...], rows: list[tuple[object, ...]]) -> None:
    client.execute(f"INSERT INTO {table} ({', '.join([*columns, '_timestamp', '_offset'])}) VALUES", rows)


@pytest.mark.clickhouse
def test_delete_persons_removes_their_rows_and_distinct_ids_only(clickhouse_client: Client) -> None:
    database = str(clickhouse_client.connection.database)
    call_command("setup_clickhouse", database=database, stdout=StringIO())
    gone, kept = uuid.uuid4(), uuid.uuid4()
    _insert(clickhouse_client, "person", messages.PERSON_COLUMNS, [
        (gone, MOMENT, 2, "{}", 0, 0, MOMENT, 1), (gone, MOMENT, 2, '{"a":1}', 1, 0, MOMENT, 2), (kept, MOMENT, 2, "{}", 0, 0, MOMENT, 3),
    ])
    _insert(clickhouse_client, "person_distinct_id", messages.PERSON_DISTINCT_ID_COLUMNS, [
        (1, "a", gone, 2, 0, MOMENT, 1), (2, "b", gone, 2, 0, MOMENT, 2), (3, "c", kept, 2, 0, MOMENT, 3),
    ])
    # The CLICKHOUSE_* settings, as the person logic calls it: no client passed.
    with override_settings(CLICKHOUSE_DATABASE=database):
        check_connection()
        delete_persons([str(gone)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        persons = clickhouse_client.execute("SELECT id FROM person")
        distinct_ids = clickhouse_client.execute("SELECT distinct_id FROM person_distinct_id ORDER BY distinct_id")
        if len(persons) == 1 and len(distinct_ids) == 1:
            break
        time.sleep(0.2)
    assert persons == [(kept,)]
    assert distinct_ids == [("c",)]


@pytest.mark.clickhouse
def test_delete_persons_with_a_client_of_the_callers(clickhouse_client: Client) -> None:
    database = str(clickhouse_client.connection.database)
    call_command("setup_clickhouse", database=database, stdout=StringIO())
    person = uuid.uuid4()
    _insert(clickhouse_client, "person", messages.PERSON_COLUMNS, [(person, MOMENT, 2, "{}", 0, 0, MOMENT, 1)])
    delete_persons([str(person)], client=clickhouse_client)
    deadline = time.monotonic() + 30
    while clickhouse_client.execute("SELECT count() FROM person")[0][0] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert clickhouse_client.execute("SELECT count() FROM person")[0][0] == 0


def test_secure_settings_make_a_verified_tls_client_with_the_ca_under_base_dir(tmp_path: Path) -> None:
    with override_settings(CLICKHOUSE_SECURE=True, CLICKHOUSE_CA="certs/ca.pem", BASE_DIR=str(tmp_path), CLICKHOUSE_PORT=9440,
                           CLICKHOUSE_PASSWORD="s3cret", CLICKHOUSE_USER="writer", CLICKHOUSE_HOST="ch.internal"):
        options = client_options(get_config())
        client = make_client(get_config())
    assert options["secure"] is True and options["verify"] is True
    assert options["ca_certs"] == str(tmp_path / "certs" / "ca.pem")
    assert (options["host"], options["port"], options["user"], options["password"]) == ("ch.internal", 9440, "writer", "s3cret")
    assert client.connection.secure_socket is True and client.connection.verify_cert is True
    with override_settings(CLICKHOUSE_SECURE=True, CLICKHOUSE_VERIFY=False):
        assert client_options(get_config())["verify"] is False
    with override_settings(CLICKHOUSE_SECURE=False):
        assert "secure" not in client_options(get_config())


@pytest.mark.clickhouse
def test_a_secure_client_does_not_fall_back_to_plain_text() -> None:
    """The test server speaks no TLS: a CLICKHOUSE_SECURE client pointed at it fails instead of going plain."""
    from clickhouse_driver.errors import Error as ClickHouseError

    with override_settings(CLICKHOUSE_SECURE=True, CLICKHOUSE_PORT=get_config().clickhouse_port):
        client = make_client(get_config())
    with pytest.raises((ClickHouseError, OSError)):
        client.execute("SELECT 1")
