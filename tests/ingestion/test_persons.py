"""Persons and distinct ids through PersonManager.apply (spec: ingestion.md §3.4, §3.6, §4; acceptance.md)."""

from __future__ import annotations

import pytest
from django.db import transaction

from plugin_server.ingestion.persons import PersonManager
from plugin_server.models import CohortPeople, Cohort, Person, PersonDistinctId
from tests.factories import create_team
from tests.ingestion.person_helpers import (
    SENT_AT,
    apply_batch,
    create_person,
    distinct_ids_of,
    person_update,
    persons_of,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def team():
    return create_team()


@pytest.fixture
def manager() -> PersonManager:
    return PersonManager(lru_size=100)


def test_new_distinct_id_creates_a_person(team, manager, recording_metrics):
    """A regular event from an unseen distinct id creates a person: created at sent_at, the event's uuid, {}."""
    update = person_update(team, "2")
    apply_batch(manager, update)
    assert recording_metrics.total("ingestion.persons.created") == 1
    [person] = persons_of(team)
    assert (person.properties, person.is_identified, person.created_at) == ({}, False, SENT_AT)
    assert str(person.uuid) == update.person_uuid
    assert distinct_ids_of(person) == ["2"]


def test_events_of_a_known_person_create_nothing(team, manager):
    """capture no element: a person's later events leave its distinct ids as they were."""
    person = create_person(team, ["asdfasdfasdf"])
    apply_batch(manager, person_update(team, "asdfasdfasdf"), person_update(team, "asdfasdfasdf"))
    assert persons_of(team) == [person]
    assert distinct_ids_of(person) == ["asdfasdfasdf"]


def test_snapshot_creates_no_person(team, manager):
    """A $snapshot event from an unseen distinct id creates no person (v0.21.3)."""
    apply_batch(manager, person_update(team, "some-id", "$snapshot", **{"$session_id": "abcf-efg"}))
    assert persons_of(team) == []


def test_new_person_then_set_in_one_batch(team, manager):
    """capture new person: $set and $set_once of the first events build the new person's properties."""
    apply_batch(
        manager,
        person_update(team, "2", **{"$set": {"utm_medium": "twitter"}, "$set_once": {"$initial_utm_medium": "twitter"}}),
        person_update(team, "2", **{"$set": {"utm_medium": "instagram"}, "$set_once": {"$initial_utm_medium": "instagram"}}),
    )
    [person] = persons_of(team)
    assert person.properties == {"utm_medium": "instagram", "$initial_utm_medium": "twitter"}
    assert distinct_ids_of(person) == ["2"]


def test_alias_adds_the_new_id_to_the_existing_person(team, manager):
    """alias: $create_alias from new_distinct_id with alias old_distinct_id adds the new id to the old person."""
    person = create_person(team, ["old_distinct_id"])
    apply_batch(manager, person_update(team, "new_distinct_id", "$create_alias", alias="old_distinct_id"))
    assert persons_of(team) == [person]
    assert distinct_ids_of(person) == ["old_distinct_id", "new_distinct_id"]


def test_alias_reverse(team, manager):
    """alias reverse: $create_alias from the existing id with an unknown alias adds the alias to it."""
    person = create_person(team, ["old_distinct_id"])
    apply_batch(manager, person_update(team, "old_distinct_id", "$create_alias", alias="new_distinct_id"))
    assert persons_of(team) == [person]
    assert distinct_ids_of(person) == ["old_distinct_id", "new_distinct_id"]


def test_alias_before_person(team, manager):
    """alias before person: neither id exists → one person with [new_distinct_id, old_distinct_id] in that order."""
    apply_batch(manager, person_update(team, "new_distinct_id", "$create_alias", alias="old_distinct_id"))
    [person] = persons_of(team)
    assert distinct_ids_of(person) == ["new_distinct_id", "old_distinct_id"]
    assert person.is_identified is False


def test_alias_both_existing_merges_into_the_new_person(team, manager, recording_metrics):
    """alias both existing: the persons merge; the survivor holds [old, new], cohorts follow it."""
    old = create_person(team, ["old_distinct_id"], properties={"a": "old", "only_old": 1})
    new = create_person(team, ["new_distinct_id"], properties={"a": "new"})
    cohort = Cohort.objects.create(team=team, name="c")
    CohortPeople.objects.create(cohort=cohort, person=old)
    apply_batch(manager, person_update(team, "new_distinct_id", "$create_alias", alias="old_distinct_id"))
    assert recording_metrics.total("ingestion.persons.merged") == 1
    [survivor] = persons_of(team)
    assert survivor.id == new.id
    assert sorted(distinct_ids_of(survivor)) == ["new_distinct_id", "old_distinct_id"]
    assert survivor.properties == {"a": "new", "only_old": 1}
    assert survivor.created_at == min(old.created_at, new.created_at)
    assert list(CohortPeople.objects.values_list("person_id", flat=True)) == [new.id]


def test_alias_to_itself_or_without_alias_creates_only_the_event_person(team, manager):
    """Aliasing an id to itself, or a $create_alias without alias, creates just the sender's person."""
    apply_batch(
        manager,
        person_update(team, "me", "$create_alias", alias="me"),
        person_update(team, "you", "$create_alias"),
    )
    assert sorted(distinct_ids_of(p)[0] for p in persons_of(team)) == ["me", "you"]
    assert PersonDistinctId.objects.filter(team=team).count() == 2


def test_identify_set(team, manager):
    """identify set: $identify with $set sets the properties and marks identified; a second one overwrites and adds."""
    person = create_person(team, ["distinct_id"])
    apply_batch(manager, person_update(team, "distinct_id", "$identify", **{"$set": {"a_prop": "test-1", "c_prop": "test-1"}}))
    person.refresh_from_db()
    assert person.properties == {"a_prop": "test-1", "c_prop": "test-1"}
    assert person.is_identified is True
    apply_batch(manager, person_update(team, "distinct_id", "$identify", **{"$set": {"a_prop": "test-2", "b_prop": "test-2b"}}))
    person.refresh_from_db()
    assert person.properties == {"a_prop": "test-2", "b_prop": "test-2b", "c_prop": "test-1"}
    assert distinct_ids_of(person) == ["distinct_id"]


def test_identify_with_anonymous_id(team, manager):
    """distinct with anonymous_id: the new id joins the anonymous person, which gets $set; replaying is harmless."""
    person = create_person(team, ["anonymous_id"])
    update = person_update(team, "new_distinct_id", "$identify", **{"$anon_distinct_id": "anonymous_id", "$set": {"a_prop": "test"}})
    apply_batch(manager, update)
    apply_batch(manager, update)
    assert persons_of(team) == [person]
    person.refresh_from_db()
    assert distinct_ids_of(person) == ["anonymous_id", "new_distinct_id"]
    assert person.properties == {"a_prop": "test"}
    assert person.is_identified is True


def test_identify_with_anonymous_id_already_created_merges(team, manager):
    """distinct with anonymous_id which was already created: one person with both ids and the email."""
    create_person(team, ["anonymous_id"])
    create_person(team, ["new_distinct_id"], properties={"email": "someone@gmail.com"})
    apply_batch(manager, person_update(team, "new_distinct_id", "$identify", **{"$anon_distinct_id": "anonymous_id"}))
    [person] = persons_of(team)
    assert sorted(distinct_ids_of(person)) == ["anonymous_id", "new_distinct_id"]
    assert person.properties == {"email": "someone@gmail.com"}
    assert person.is_identified is True


def test_identify_sets_is_identified(team, manager):
    """set is_identified: $identify with empty properties marks an existing person identified."""
    person = create_person(team, ["777"], is_identified=False)
    apply_batch(manager, person_update(team, "777", "$identify"))
    person.refresh_from_db()
    assert person.is_identified is True


def test_identify_of_an_unseen_id_creates_an_identified_person(team, manager):
    """$identify from an unseen distinct id creates one identified person."""
    apply_batch(manager, person_update(team, "fresh", "$identify"))
    [person] = persons_of(team)
    assert person.is_identified is True
    assert distinct_ids_of(person) == ["fresh"]


def test_merge_keeps_identified(team, manager):
    """A merge keeps the person identified if either side was (later versions' rule)."""
    create_person(team, ["old"], is_identified=True)
    create_person(team, ["new"], is_identified=False)
    apply_batch(manager, person_update(team, "new", "$create_alias", alias="old"))
    [person] = persons_of(team)
    assert person.is_identified is True


def test_set_on_any_event_existing_person(team, manager):
    """any event can do $set on props (user exists)."""
    person = create_person(team, ["distinct_id"])
    apply_batch(manager, person_update(team, "distinct_id", "some_event", **{"$set": {"a_prop": "test-1", "c_prop": "test-1"}}))
    person.refresh_from_db()
    assert person.properties == {"a_prop": "test-1", "c_prop": "test-1"}
    assert distinct_ids_of(person) == ["distinct_id"]


def test_set_on_any_event_new_person(team, manager):
    """any event can do $set on props (new user): the person is created with those properties."""
    apply_batch(manager, person_update(team, "distinct_id", "some_event", **{"$set": {"a_prop": "test-1", "c_prop": "test-1"}}))
    [person] = persons_of(team)
    assert person.properties == {"a_prop": "test-1", "c_prop": "test-1"}
    assert distinct_ids_of(person) == ["distinct_id"]


def test_set_once_across_batches(team, manager):
    """any event can do $set_once on props: only keys the person lacks are filled."""
    person = create_person(team, ["distinct_id"])
    apply_batch(manager, person_update(team, "distinct_id", "some_event", **{"$set_once": {"a_prop": "test-1", "c_prop": "test-1"}}))
    apply_batch(manager, person_update(team, "distinct_id", "some_other_event", **{"$set_once": {"a_prop": "test-2", "b_prop": "test-2b"}}))
    person.refresh_from_db()
    assert person.properties == {"a_prop": "test-1", "b_prop": "test-2b", "c_prop": "test-1"}


def test_increment_does_not_increment_non_numerical_props(team, manager):
    """$increment does not increment non-numerical props: "world" stays "world"."""
    person = create_person(team, ["distinct_id"])
    apply_batch(manager, person_update(team, "distinct_id", "some_event", **{"$set": {"hello": "world"}}))
    apply_batch(manager, person_update(team, "distinct_id", "some_event", **{"$increment": {"hello": 10000}}))
    person.refresh_from_db()
    assert person.properties == {"hello": "world"}


def test_increment_illustration(team, manager):
    """Spec §4.6: {visits: 2, name: "x"} + $increment {visits: 1, score: -5, ratio: 0.5, name: 4, tag: "1"}."""
    person = create_person(team, ["d"], properties={"visits": 2, "name": "x"})
    increments = {"visits": 1, "score": -5, "ratio": 0.5, "name": 4, "tag": "1"}
    apply_batch(manager, person_update(team, "d", "e", **{"$increment": increments}))
    person.refresh_from_db()
    assert person.properties == {"visits": 3, "name": "x", "score": -5}


def test_increments_of_one_batch_add_up(team, manager):
    """Many increments of one person in one batch are folded: the sum is written once."""
    person = create_person(team, ["d"], properties={"n": 1})
    apply_batch(manager, *[person_update(team, "d", "e", **{"$increment": {"n": 2}}) for _ in range(10)])
    person.refresh_from_db()
    assert person.properties == {"n": 21}


def test_persons_are_per_team(team, manager):
    """The same distinct id in two teams is two persons; an alias in one team leaves the other alone."""
    other_team = create_team()
    theirs = create_person(other_team, ["old"])
    apply_batch(manager, person_update(team, "new", "$create_alias", alias="old"))
    [ours] = persons_of(team)
    assert distinct_ids_of(ours) == ["new", "old"]
    assert distinct_ids_of(theirs) == ["old"]


def test_unchanged_set_writes_nothing(team, manager):
    """A $set that changes nothing does not update the row (True is not 1: types count)."""
    person = create_person(team, ["d"], properties={"a": 1})
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        apply_batch(manager, person_update(team, "d", "e", **{"$set": {"a": 1}}))
    assert not [q for q in queries.captured_queries if q["sql"].lstrip().startswith("UPDATE")]
    apply_batch(manager, person_update(team, "d", "e", **{"$set": {"a": True}}))
    person.refresh_from_db()
    assert person.properties == {"a": True}


def test_rolled_back_batch_leaves_no_cached_key(team, manager, django_capture_on_commit_callbacks):
    """If the ingester's transaction rolls back, the next delivery of the batch still creates the person."""

    class SinkFailed(Exception):
        pass

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(SinkFailed):
        with transaction.atomic():
            manager.apply([person_update(team, "d")])
            raise SinkFailed
    assert persons_of(team) == []
    assert not manager.distinct_ids.contains(team.id, "d")
    with django_capture_on_commit_callbacks(execute=True):
        apply_batch(manager, person_update(team, "d"))
    assert manager.distinct_ids.contains(team.id, "d")
    assert [distinct_ids_of(p) for p in persons_of(team)] == [["d"]]


def test_unstorable_distinct_id_is_counted_not_fatal(team, manager, recording_metrics):
    """A distinct id too long for its column (or holding NUL) creates no person, is counted, and the batch goes on."""
    apply_batch(manager, person_update(team, "x" * 401), person_update(team, "a\x00b"), person_update(team, "ok"))
    assert [distinct_ids_of(p) for p in persons_of(team)] == [["ok"]]
    assert recording_metrics.total("ingestion.persons.invalid_distinct_id") == 2


def test_unstorable_property_values_are_replaced(team, manager):
    """NUL characters and NaN in $set values (which jsonb refuses) are stored as U+FFFD and null."""
    apply_batch(manager, person_update(team, "d", "e", **{"$set": {"name": "a\x00b", "n": float("nan")}}))
    [person] = persons_of(team)
    assert person.properties == {"name": "a\ufffdb", "n": None}


def test_person_for(team, manager):
    """person_for returns the person of a distinct id in its team only."""
    person = create_person(team, ["d"])
    found = manager.person_for(team.id, "d")
    assert found is not None and found.id == person.id and found.uuid == str(person.uuid)
    assert manager.person_for(create_team().id, "d") is None
    assert Person.objects.count() == 1


def test_apply_reports_what_it_wrote(team, manager):
    """apply returns the persons created, updated and merged away and the distinct id rows added or moved."""
    old = create_person(team, ["old"])
    new = create_person(team, ["new"])
    fresh = person_update(team, "fresh")
    with transaction.atomic():
        changes = manager.apply(
            [fresh, person_update(team, "new", "$create_alias", alias="old"), person_update(team, "new", **{"$set": {"a": 1}})]
        )
    assert [person.uuid for person in changes.created] == [fresh.person_uuid]
    assert [(person.uuid, person.properties) for person in changes.updated] == [(str(new.uuid), {"a": 1})]
    assert [person.uuid for person in changes.deleted] == [str(old.uuid)]
    rows = {row.distinct_id: row for row in changes.distinct_ids}
    assert rows["fresh"].person_uuid == fresh.person_uuid
    assert rows["old"].person_uuid == str(new.uuid)
    assert rows["old"].id == PersonDistinctId.objects.get(distinct_id="old").id
    assert sorted(rows) == ["fresh", "old"]


def test_distinct_ids_and_properties_with_quotes_and_unicode_round_trip(team, manager):
    """Quotes, backslashes, commas, braces and non-ASCII text are stored exactly as sent."""
    odd = 'a "quoted", \\back\\slashed {id} 💻 é'
    apply_batch(manager, person_update(team, odd, **{"$set": {odd: odd}}), person_update(team, odd + "2", "$create_alias", alias=odd))
    [person] = persons_of(team)
    assert distinct_ids_of(person) == [odd, odd + "2"]
    assert person.properties == {odd: odd}
    assert manager.person_for(team.id, odd + "2").id == person.id
