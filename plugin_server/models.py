"""The one place the plugin server gets PostHog's models from.

On its own the server uses the stand-ins in :mod:`posthog_standin.models`
(same tables and columns as PostHog). Inside PostHog's monolith, set
``POSTHOG_MODELS_MODULE = "posthog.models"`` and leave ``posthog_standin`` out
of ``INSTALLED_APPS``: every other module imports models from here only, so
nothing else needs to know which it got. The server's own tables are defined
at the bottom.
"""

from __future__ import annotations

import importlib
import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models

if TYPE_CHECKING:
    # The type checker sees the stand-ins (same fields as PostHog's models);
    # "X as X" re-exports them under strict.
    from posthog_standin.models import (
        Cohort as Cohort,
        CohortPeople as CohortPeople,
        Element as Element,
        ElementGroup as ElementGroup,
        Event as Event,
        EventDefinition as EventDefinition,
        Organization as Organization,
        OrganizationMembership as OrganizationMembership,
        Person as Person,
        PersonDistinctId as PersonDistinctId,
        Plugin as Plugin,
        PluginAttachment as PluginAttachment,
        PluginConfig as PluginConfig,
        PluginLogEntry as PluginLogEntry,
        PluginStorage as PluginStorage,
        PropertyDefinition as PropertyDefinition,
        SessionRecordingEvent as SessionRecordingEvent,
        Team as Team,
        User as User,
    )
else:
    _source = importlib.import_module(getattr(settings, "POSTHOG_MODELS_MODULE", "posthog_standin.models"))

    Organization = _source.Organization
    User = _source.User
    OrganizationMembership = _source.OrganizationMembership
    Team = _source.Team
    Person = _source.Person
    PersonDistinctId = _source.PersonDistinctId
    Cohort = _source.Cohort
    CohortPeople = _source.CohortPeople
    Element = _source.Element
    ElementGroup = _source.ElementGroup
    Event = _source.Event
    SessionRecordingEvent = _source.SessionRecordingEvent
    EventDefinition = _source.EventDefinition
    PropertyDefinition = _source.PropertyDefinition
    Plugin = _source.Plugin
    PluginConfig = _source.PluginConfig
    PluginAttachment = _source.PluginAttachment
    PluginStorage = _source.PluginStorage
    PluginLogEntry = _source.PluginLogEntry


class DeadLetter(models.Model):
    """A message that could not be ingested, kept with its reason for replay."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    source = models.CharField(max_length=40, help_text="celery, kafka, ...")
    queue = models.CharField(max_length=200, help_text="queue or topic the message came from")
    reason = models.CharField(max_length=80, db_index=True, help_text="machine-readable reason")
    error = models.TextField(help_text="human-readable error")
    team_id = models.IntegerField(null=True, blank=True, db_index=True)
    event_uuid = models.UUIDField(null=True, blank=True)
    payload = models.BinaryField(help_text="the raw message as received")
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "plugin_server_deadletter"

    def __str__(self) -> str:
        return f"{self.reason} ({self.created_at:%Y-%m-%d %H:%M:%S})"


class IngestedEventUuid(models.Model):
    """The uuid of every event stored through the Postgres pipeline.

    ``posthog_event`` has no uuid column at this schema version, so the server
    keeps this index of its own to store a re-delivered event once."""

    uuid = models.UUIDField(primary_key=True)
    team_id = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "plugin_server_ingestedeventuuid"
