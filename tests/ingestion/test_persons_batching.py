"""Person writes are batched, and stay correct when two servers ingest one person at once.

Query counts are asserted with CaptureQueriesContext (a batch costs a fixed
number of statements, whatever its size); concurrency runs two threads, each
with its own database connection and its own PersonManager (two servers),
started together on a barrier.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from plugin_server.exceptions import RetriableError
from plugin_server.ingestion.persons import PersonManager, PersonUpdate
from plugin_server.models import Person, PersonDistinctId, Team
from tests.factories import create_team
from tests.ingestion.person_helpers import create_person, person_update


def _count_queries(manager: PersonManager, updates: list[PersonUpdate]) -> int:
    """Statements one batch sends, savepoints aside."""
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        manager.apply(updates)
    return len([q for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))])


def _set_batch(team: Team, persons: int, events: int, tag: str) -> list[PersonUpdate]:
    return [
        person_update(team, f"user-{i % persons}", "$pageview", **{"$set": {"last": f"{tag}-{i}"}, "$increment": {"n": 1}})
        for i in range(events)
    ]


@pytest.mark.django_db
def test_set_on_existing_persons_costs_the_same_queries_for_20_or_200_events():
    """200 events of 50 existing persons with $set cost as many statements as 20 events of 5 (load + update)."""
    team = create_team()
    for i in range(50):
        create_person(team, [f"user-{i}"])
    manager = PersonManager(lru_size=1000)
    small = _count_queries(manager, _set_batch(team, persons=5, events=20, tag="small"))
    large = _count_queries(manager, _set_batch(team, persons=50, events=200, tag="large"))
    assert large == small
    assert large == 2  # one SELECT ... FOR NO KEY UPDATE, one UPDATE
    person = Person.objects.get(persondistinctid__distinct_id="user-49")
    assert person.properties == {"last": "large-199", "n": 4}


@pytest.mark.django_db
def test_new_persons_cost_one_statement_per_table():
    """200 events of 100 unseen distinct ids: one lookup, one person insert, one distinct-id insert."""
    team = create_team()
    manager = PersonManager(lru_size=1000)
    updates = [person_update(team, f"new-{i % 100}", **{"$set": {"i": i}}) for i in range(200)]
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        manager.apply(updates)
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    assert statements.count("INSERT") == 2 and statements.count("SELECT") == 1 and "UPDATE" not in statements
    assert Person.objects.filter(team=team).count() == 100
    assert Person.objects.get(persondistinctid__distinct_id="new-7").properties == {"i": 107}


@pytest.mark.django_db
def test_plain_events_of_uncached_ids_only_probe_without_locks():
    """Events without $set of ids the cache does not hold cost one unlocked lookup and create only the missing."""
    team = create_team()
    for i in range(50):
        create_person(team, [f"user-{i}"])
    manager = PersonManager(lru_size=1000)
    updates = [person_update(team, f"user-{i % 60}") for i in range(200)]
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        manager.apply(updates)
    statements = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    assert len(statements) == 3  # probe, persons, distinct ids
    assert not any("FOR NO KEY UPDATE" in sql for sql in statements)
    assert Person.objects.filter(team=team).count() == 60


@pytest.mark.django_db
def test_a_mixed_batch_of_many_teams_has_a_bounded_cost():
    """Identify, alias and plain events over three teams still cost a fixed number of statements (no merge)."""
    teams = [create_team() for _ in range(3)]
    manager = PersonManager(lru_size=1000)
    for size in (10, 100):
        updates: list[PersonUpdate] = []
        for i in range(size):
            team = teams[i % 3]
            updates.append(person_update(team, f"anon-{size}-{i}"))
            updates.append(person_update(team, f"user-{size}-{i}", "$identify", **{"$anon_distinct_id": f"anon-{size}-{i}"}))
            updates.append(person_update(team, f"user-{size}-{i}", "$create_alias", alias=f"device-{size}-{i}"))
        assert _count_queries(manager, updates) == 3  # lookup, persons, distinct ids
    assert PersonDistinctId.objects.count() == 3 * 110
    assert Person.objects.count() == 110


def _run_together(workers: list[Callable[[], None]]) -> None:
    """Run each callable in its own thread (own DB connection), all released at once; re-raise their errors."""
    barrier = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        try:
            barrier.wait(timeout=30)
            work()
        except BaseException as error:  # noqa: BLE001 - handed to the test thread below
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(work,)) for work in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a worker is stuck"
    if errors:
        raise errors[0]


def _orphan_persons() -> int:
    return Person.objects.filter(persondistinctid__isnull=True).count()


@pytest.mark.django_db(transaction=True)
def test_two_servers_creating_and_updating_the_same_persons():
    """Two servers ingest the same 20 new users at once: one person each, and no increment is lost."""
    team = create_team()
    batches, per_batch = 10, 40

    def server(tag: str) -> Callable[[], None]:
        manager = PersonManager(lru_size=1000)

        def work() -> None:
            for b in range(batches):
                with transaction.atomic():
                    manager.apply(_set_batch(team, persons=20, events=per_batch, tag=f"{tag}{b}"))

        return work

    _run_together([server("a"), server("b")])
    assert PersonDistinctId.objects.filter(team=team).count() == 20
    assert Person.objects.filter(team=team).count() == 20
    assert _orphan_persons() == 0
    # Each user got 2 servers x 10 batches x 2 events.
    assert sorted({p.properties["n"] for p in Person.objects.filter(team=team)}) == [40]


@pytest.mark.django_db(transaction=True)
def test_two_servers_merging_overlapping_persons():
    """Server A aliases x_i → y_i while server B aliases y_i → z_i: each triple ends as one person, none orphaned."""
    team = create_team()
    pairs = 30
    for i in range(pairs):
        create_person(team, [f"x{i}"], properties={"x": i})
        create_person(team, [f"z{i}"], properties={"z": i})

    def server(events: list[PersonUpdate]) -> Callable[[], None]:
        manager = PersonManager(lru_size=1000)

        def work() -> None:
            for start in range(0, len(events), 5):
                with transaction.atomic():
                    manager.apply(events[start : start + 5])

        return work

    a = [person_update(team, f"y{i}", "$create_alias", alias=f"x{i}") for i in range(pairs)]
    b = [person_update(team, f"z{i}", "$create_alias", alias=f"y{i}") for i in range(pairs)]
    _run_together([server(a), server(b)])
    assert Person.objects.filter(team=team).count() == pairs
    assert _orphan_persons() == 0
    for i in range(pairs):
        owners = set(
            PersonDistinctId.objects.filter(team=team, distinct_id__in=[f"x{i}", f"y{i}", f"z{i}"]).values_list(
                "person_id", flat=True
            )
        )
        assert len(owners) == 1
        assert Person.objects.get(id=owners.pop()).properties == {"x": i, "z": i}


def _wait_until_a_backend_waits_for_a_lock(deadline_seconds: float = 20.0) -> None:
    """Poll pg_stat_activity (bounded) until another session of this database is blocked on a lock."""
    deadline = time.monotonic() + deadline_seconds
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            # Statistics views are snapshotted per transaction: clear it to see the present.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = cursor.fetchone()
            if row and row[0] > 0:
                return
            time.sleep(0.02)
    raise AssertionError("no session ever waited for a lock")


def _race_for_d(team: Team, loser: PersonManager) -> list[RetriableError]:
    """Server B creates "d" (uncommitted) and commits once server A, which also found "d" new, waits on it."""
    b_inserted = threading.Event()
    gave_up: list[RetriableError] = []

    def server_b() -> None:
        with transaction.atomic():
            PersonManager().apply([person_update(team, "d", **{"$set": {"by": "b"}})])
            b_inserted.set()
            _wait_until_a_backend_waits_for_a_lock()

    def server_a() -> None:
        assert b_inserted.wait(timeout=20)
        try:
            with transaction.atomic():
                loser.apply([person_update(team, "d", **{"$set": {"from_a": True}})])
        except RetriableError as error:
            gave_up.append(error)

    _run_together([server_b, server_a])
    return gave_up


@pytest.mark.django_db(transaction=True)
def test_a_batch_that_loses_a_creation_race_is_replayed_on_the_winners_person(recording_metrics):
    """Server A lost the race for "d": it replays its batch, so A's $set lands on B's person and A
    leaves no orphan person behind."""
    team = create_team()
    assert _race_for_d(team, PersonManager()) == []
    [person] = Person.objects.filter(team=team)
    assert person.properties == {"by": "b", "from_a": True}
    assert _orphan_persons() == 0
    assert recording_metrics.total("ingestion.persons.retries") == 1
    assert recording_metrics.total("ingestion.persons.created") == 1


@pytest.mark.django_db(transaction=True)
def test_a_batch_out_of_attempts_raises_retriable_and_writes_nothing(recording_metrics):
    """With no attempt left, the loser raises RetriableError (the consumer retries the batch later) and
    none of its person work is committed."""
    team = create_team()
    [error] = _race_for_d(team, PersonManager(max_attempts=1))
    assert "1 attempts" in str(error)
    [person] = Person.objects.filter(team=team)
    assert person.properties == {"by": "b"}
    assert _orphan_persons() == 0


@pytest.mark.django_db(transaction=True)
def test_a_batch_chosen_as_deadlock_victim_is_replayed(recording_metrics):
    """Another session holds person 2 and then asks for person 1, which the batch locked: Postgres
    aborts the batch's person work (deadlock); it is rolled back to its savepoint and replayed."""
    team = create_team()
    first = create_person(team, ["one"])
    second = create_person(team, ["two"])
    holding_second = threading.Event()

    def other_session() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            # A long timeout here makes the batch's session the one that detects the deadlock.
            cursor.execute("SET LOCAL deadlock_timeout = '30s'")
            cursor.execute("SELECT id FROM posthog_person WHERE id = %s FOR UPDATE", [second.id])
            holding_second.set()
            _wait_until_a_backend_waits_for_a_lock()
            cursor.execute("SELECT id FROM posthog_person WHERE id = %s FOR UPDATE", [first.id])

    def server() -> None:
        assert holding_second.wait(timeout=20)
        with transaction.atomic():
            PersonManager().apply(
                [person_update(team, "one", **{"$set": {"v": 1}}), person_update(team, "two", **{"$set": {"v": 2}})]
            )

    _run_together([other_session, server])
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.properties, second.properties) == ({"v": 1}, {"v": 2})
    assert recording_metrics.total("ingestion.persons.retries") == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_server_processes_creating_and_updating_the_same_persons():
    """Two real server processes ingest the same 20 new users at once: one person each, no increment lost."""
    team = create_team()
    database = connection.settings_dict
    login = database["USER"] + (f":{database['PASSWORD']}" if database.get("PASSWORD") else "")
    address = f"{database['HOST'] or '127.0.0.1'}:{database['PORT'] or 5432}"
    # The children must use this test's database, not the one DATABASE_URL names.
    env = {**os.environ, "DATABASE_URL": f"postgres://{login}@{address}/{database['NAME']}"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.ingestion.person_worker", str(team.id), tag, "10"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for tag in ("a", "b")
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            assert process.wait(timeout=120) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert PersonDistinctId.objects.filter(team=team).count() == 20
    assert Person.objects.filter(team=team).count() == 20
    assert _orphan_persons() == 0
    assert sorted({p.properties["n"] for p in Person.objects.filter(team=team)}) == [40]
