"""The distinct-id cache (spec: ingestion.md §6.3; acceptance.md "Distinct-id cache")."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from plugin_server.ingestion.distinct_ids import DistinctIdCache
from plugin_server.ingestion.persons import PersonManager
from tests.factories import create_team
from tests.ingestion.person_helpers import apply_batch, create_person, person_update


class FakeClock:
    """Seconds that the test moves forward by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.django_db
def test_returns_whether_person_exists_or_not():
    """1234 exists → not new; 12345 → new; 567 → new the first time, not new the second (nothing created)."""
    team = create_team()
    create_person(team, ["1234"])
    cache = DistinctIdCache(max_size=10)
    assert cache.is_new(team.id, "1234") is False
    assert cache.is_new(team.id, "12345") is True
    assert cache.is_new(team.id, "567") is True
    assert cache.is_new(team.id, "567") is False


@pytest.mark.django_db
def test_a_cached_key_costs_no_query():
    """A key seen once answers from memory afterwards."""
    team = create_team()
    cache = DistinctIdCache(max_size=10)
    cache.is_new(team.id, "a")
    with CaptureQueriesContext(connection) as queries:
        assert cache.is_new(team.id, "a") is False
    assert len(queries) == 0


def test_least_recently_used_key_is_evicted():
    """Beyond max_size the key used longest ago goes first; a hit makes a key recent."""
    cache = DistinctIdCache(max_size=2)
    cache.add([(1, "a"), (1, "b")])
    assert cache.contains(1, "a")  # "a" is now the most recent
    cache.add([(1, "c")])
    assert (cache.contains(1, "a"), cache.contains(1, "b"), cache.contains(1, "c")) == (True, False, True)
    assert len(cache) == 2


def test_keys_expire_an_hour_after_their_last_hit():
    """A key is kept one hour; every hit renews it."""
    clock = FakeClock()
    cache = DistinctIdCache(max_size=10, clock=clock)
    cache.add([(1, "a")])
    clock.now += 3000
    assert cache.contains(1, "a")
    clock.now += 3000  # 6000 s after adding, 3000 s after the hit
    assert cache.contains(1, "a")
    clock.now += 3601
    assert not cache.contains(1, "a")
    assert len(cache) == 0


def test_keys_are_per_team():
    """The same distinct id in another team is another key."""
    cache = DistinctIdCache(max_size=10)
    cache.add([(1, "a")])
    assert not cache.contains(2, "a")


@pytest.mark.django_db
def test_manager_learns_keys_after_commit_and_skips_their_lookup(django_capture_on_commit_callbacks):
    """After a batch commits, events without $set of its distinct ids need no person query."""
    team = create_team()
    manager = PersonManager(lru_size=10)
    with django_capture_on_commit_callbacks(execute=True):
        apply_batch(manager, person_update(team, "a"), person_update(team, "b"))
    assert manager.distinct_ids.contains(team.id, "a") and manager.distinct_ids.contains(team.id, "b")
    with CaptureQueriesContext(connection) as queries:
        apply_batch(manager, person_update(team, "a"), person_update(team, "b"))
    assert not [q for q in queries.captured_queries if "posthog_person" in q["sql"]]
