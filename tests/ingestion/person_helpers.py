"""Builders and readers for the person tests."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from django.db import transaction

from plugin_server.ingestion.persons import PersonManager, PersonUpdate
from plugin_server.ingestion.uuidt import uuidt
from plugin_server.models import Person, PersonDistinctId, Team

SENT_AT = datetime(2021, 5, 17, 10, 0, tzinfo=timezone.utc)


def person_update(team: Team, distinct_id: str, event: str = "$pageview", **properties: Any) -> PersonUpdate:
    """One event's person update with a fresh person uuid, created_at = SENT_AT."""
    return PersonUpdate(
        team_id=team.id,
        distinct_id=distinct_id,
        event=event,
        properties=properties,
        new_person_created_at=SENT_AT,
        person_uuid=str(uuidt()),
    )


def apply_batch(manager: PersonManager, *updates: PersonUpdate) -> None:
    """Apply a batch the way the ingester does: inside one transaction."""
    with transaction.atomic():
        manager.apply(updates)


def create_person(team: Team, distinct_ids: list[str], **fields: Any) -> Person:
    person = Person.objects.create(team=team, **fields)
    for distinct_id in distinct_ids:
        PersonDistinctId.objects.create(team=team, person=person, distinct_id=distinct_id)
    return person


def persons_of(team: Team) -> list[Person]:
    return list(Person.objects.filter(team=team).order_by("id"))


def distinct_ids_of(person: Person) -> list[str]:
    """A person's distinct ids in the order they were added (row id), as PostHog lists them."""
    return list(PersonDistinctId.objects.filter(person=person).order_by("id").values_list("distinct_id", flat=True))
