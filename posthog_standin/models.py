"""PostHog's tables, column for column, as the plugin server sees them.

Types follow the PostHog Django models of May 2021. Data only: no I/O
lives here.
"""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.utils import timezone


class Organization(models.Model):
    """An organization; its plugins run only when ``plugins_access_level > 0``."""

    class PluginsAccessLevel(models.IntegerChoices):
        NONE = 0, "none"
        CONFIG = 3, "config"
        INSTALL = 6, "install"
        ROOT = 9, "root"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    personalization = models.JSONField(default=dict, blank=True)
    setup_section_2_completed = models.BooleanField(default=True)
    plugins_access_level = models.PositiveSmallIntegerField(
        default=PluginsAccessLevel.CONFIG, choices=PluginsAccessLevel.choices
    )

    def __str__(self) -> str:
        return self.name

    class Meta:
        db_table = "posthog_organization"


class User(models.Model):
    """The slice of ``posthog_user`` read for first-event telemetry."""

    distinct_id = models.CharField(max_length=200, null=True, blank=True, unique=True)
    email = models.EmailField(max_length=254, blank=True, default="")
    first_name = models.CharField(max_length=150, blank=True, default="")

    def __str__(self) -> str:
        return self.email or str(self.distinct_id)

    class Meta:
        db_table = "posthog_user"


class OrganizationMembership(models.Model):
    """Which users belong to which organization (first-event telemetry)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="organization_memberships")
    level = models.PositiveSmallIntegerField(default=1)
    joined_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "posthog_organizationmembership"
        constraints = [
            models.UniqueConstraint(fields=["organization_id", "user_id"], name="unique_organization_membership")
        ]


class Team(models.Model):
    """A project whose events are ingested."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="teams")
    name = models.CharField(max_length=200, default="Default Project")
    api_token = models.CharField(max_length=200, unique=True, null=True, blank=True)
    app_urls = ArrayField(models.CharField(max_length=200, null=True, blank=True), default=list, blank=True)
    anonymize_ips = models.BooleanField(default=False)
    completed_snippet_onboarding = models.BooleanField(default=False)
    ingested_event = models.BooleanField(default=False)
    opt_out_capture = models.BooleanField(default=False)
    session_recording_opt_in = models.BooleanField(default=False)
    plugins_opt_in = models.BooleanField(default=False)
    signup_token = models.CharField(max_length=200, null=True, blank=True)
    is_demo = models.BooleanField(default=False)
    slack_incoming_webhook = models.CharField(max_length=500, null=True, blank=True)
    event_names = models.JSONField(default=list, blank=True)
    event_names_with_usage = models.JSONField(default=list, blank=True)
    event_properties = models.JSONField(default=list, blank=True)
    event_properties_with_usage = models.JSONField(default=list, blank=True)
    event_properties_numerical = models.JSONField(default=list, blank=True)
    test_account_filters = models.JSONField(default=list, blank=True)
    timezone = models.CharField(max_length=240, default="UTC")
    data_attributes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.pk})"

    class Meta:
        db_table = "posthog_team"


class Person(models.Model):
    created_at = models.DateTimeField(default=timezone.now)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, db_constraint=False)
    properties = models.JSONField(default=dict)
    is_user = models.ForeignKey(User, on_delete=models.CASCADE, null=True, blank=True, db_constraint=False)
    is_identified = models.BooleanField(default=False)
    uuid = models.UUIDField(db_index=True, default=uuid.uuid4, editable=False)

    class Meta:
        db_table = "posthog_person"
        indexes = [models.Index(fields=["team_id", "id"], name="posthog_person_team_id_idx")]


class PersonDistinctId(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, db_constraint=False)
    person = models.ForeignKey(Person, on_delete=models.CASCADE)
    distinct_id = models.CharField(max_length=400)

    class Meta:
        db_table = "posthog_persondistinctid"
        constraints = [models.UniqueConstraint(fields=["team", "distinct_id"], name="unique distinct_id for team")]


class Cohort(models.Model):
    """Only here so that ``posthog_cohortpeople.cohort_id`` has a parent."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE)
    name = models.CharField(max_length=400, null=True, blank=True)
    deleted = models.BooleanField(default=False)

    class Meta:
        db_table = "posthog_cohort"


class CohortPeople(models.Model):
    id = models.BigAutoField(primary_key=True)
    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE)
    person = models.ForeignKey(Person, on_delete=models.CASCADE)

    class Meta:
        db_table = "posthog_cohortpeople"
        indexes = [models.Index(fields=["cohort_id", "person_id"], name="posthog_cohortpeople_cp_idx")]


class ElementGroup(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, db_constraint=False)
    hash = models.CharField(max_length=400, null=True, blank=True)

    class Meta:
        db_table = "posthog_elementgroup"
        constraints = [models.UniqueConstraint(fields=["team", "hash"], name="unique hash for each team")]


class Element(models.Model):
    text = models.CharField(max_length=10_000, null=True, blank=True)
    tag_name = models.CharField(max_length=1_000, null=True, blank=True)
    href = models.CharField(max_length=10_000, null=True, blank=True)
    attr_id = models.CharField(max_length=10_000, null=True, blank=True)
    attr_class = ArrayField(models.CharField(max_length=200, blank=True), null=True, blank=True)
    nth_child = models.IntegerField(null=True, blank=True)
    nth_of_type = models.IntegerField(null=True, blank=True)
    attributes = models.JSONField(default=dict)
    event = models.ForeignKey("Event", on_delete=models.CASCADE, null=True, blank=True, db_constraint=False)
    order = models.IntegerField(null=True, blank=True)
    group = models.ForeignKey(ElementGroup, on_delete=models.CASCADE, null=True, blank=True)

    class Meta:
        db_table = "posthog_element"


class Event(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, null=True, blank=True)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, db_constraint=False)
    event = models.CharField(max_length=200, null=True, blank=True)
    distinct_id = models.CharField(max_length=200)
    properties = models.JSONField(default=dict)
    timestamp = models.DateTimeField(default=timezone.now, blank=True)
    elements = models.JSONField(default=list, null=True, blank=True)
    elements_hash = models.CharField(max_length=200, null=True, blank=True)
    site_url = models.CharField(max_length=200, null=True, blank=True)

    class Meta:
        db_table = "posthog_event"
        indexes = [
            models.Index(fields=["team_id", "-timestamp"], name="posthog_event_team_ts_idx"),
            models.Index(fields=["elements_hash"], name="posthog_event_elhash_idx"),
        ]


class SessionRecordingEvent(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, null=True, blank=True)
    timestamp = models.DateTimeField(default=timezone.now, blank=True)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, db_constraint=False)
    distinct_id = models.CharField(max_length=200)
    session_id = models.CharField(max_length=200)
    snapshot_data = models.JSONField(default=dict)

    class Meta:
        db_table = "posthog_sessionrecordingevent"
        indexes = [models.Index(fields=["team_id", "session_id"], name="posthog_sre_team_session_idx")]


class EventDefinition(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="event_definitions")
    name = models.CharField(max_length=400)
    volume_30_day = models.IntegerField(default=None, null=True)
    query_usage_30_day = models.IntegerField(default=None, null=True)

    class Meta:
        db_table = "posthog_eventdefinition"
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="posthog_eventdefinition_team_id_name_unique")]


class PropertyDefinition(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="property_definitions")
    name = models.CharField(max_length=400)
    is_numerical = models.BooleanField(default=False)
    volume_30_day = models.IntegerField(default=None, null=True)
    query_usage_30_day = models.IntegerField(default=None, null=True)

    class Meta:
        db_table = "posthog_propertydefinition"
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="posthog_propertydefinition_team_id_name_unique")]


class Plugin(models.Model):
    """Code installed for an organization (local folder, archive or source)."""

    class PluginType(models.TextChoices):
        LOCAL = "local", "local"
        CUSTOM = "custom", "custom"
        REPOSITORY = "repository", "repository"
        SOURCE = "source", "source"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="plugins")
    plugin_type = models.CharField(max_length=200, null=True, blank=True, choices=PluginType.choices, default=None)
    is_global = models.BooleanField(default=False)
    is_preinstalled = models.BooleanField(default=False)
    name = models.CharField(max_length=200, null=True, blank=True)
    description = models.TextField(null=True, blank=True)
    url = models.CharField(max_length=800, null=True, blank=True)
    config_schema = models.JSONField(default=dict, blank=True)
    tag = models.CharField(max_length=200, null=True, blank=True)
    archive = models.BinaryField(blank=True, null=True)
    source = models.TextField(blank=True, null=True)
    latest_tag = models.CharField(max_length=800, null=True, blank=True)
    latest_tag_checked_at = models.DateTimeField(null=True, blank=True)
    error = models.JSONField(default=None, null=True, blank=True)
    from_json = models.BooleanField(default=False)
    from_web = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.pk})"

    class Meta:
        db_table = "posthog_plugin"


class PluginConfig(models.Model):
    """One plugin enabled for one team, with its settings and its place in the chain."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, null=True)
    plugin = models.ForeignKey(Plugin, on_delete=models.CASCADE)
    enabled = models.BooleanField(default=False)
    order = models.IntegerField(null=True, blank=True)
    config = models.JSONField(default=dict, blank=True)
    error = models.JSONField(default=None, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.plugin} for team {self.team_id}"

    class Meta:
        db_table = "posthog_pluginconfig"


class PluginAttachment(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, null=True, blank=True)
    plugin_config = models.ForeignKey(PluginConfig, on_delete=models.CASCADE, null=True, blank=True)
    key = models.CharField(max_length=200)
    content_type = models.CharField(max_length=200)
    file_name = models.CharField(max_length=200)
    file_size = models.IntegerField()
    contents = models.BinaryField()

    class Meta:
        db_table = "posthog_pluginattachment"


class PluginStorage(models.Model):
    plugin_config = models.ForeignKey(PluginConfig, on_delete=models.CASCADE)
    key = models.CharField(max_length=200)
    value = models.TextField(blank=True, null=True)

    class Meta:
        db_table = "posthog_pluginstorage"
        constraints = [models.UniqueConstraint(fields=["plugin_config_id", "key"], name="posthog_unique_plugin_storage_key")]


class PluginLogEntry(models.Model):
    class Source(models.TextChoices):
        SYSTEM = "SYSTEM", "system"
        PLUGIN = "PLUGIN", "plugin"
        CONSOLE = "CONSOLE", "console"

    class Type(models.TextChoices):
        DEBUG = "DEBUG", "debug"
        LOG = "LOG", "log"
        INFO = "INFO", "info"
        WARN = "WARN", "warn"
        ERROR = "ERROR", "error"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    # NULL: the entry of a config without a team (a global plugin).
    team_id = models.IntegerField(db_index=True, null=True, blank=True)
    plugin_id = models.IntegerField(db_index=True)
    plugin_config_id = models.IntegerField(db_index=True)
    timestamp = models.DateTimeField(default=timezone.now)
    source = models.CharField(max_length=20, choices=Source.choices)
    type = models.CharField(max_length=20, choices=Type.choices)
    message = models.TextField(db_index=False)
    instance_id = models.UUIDField()

    class Meta:
        db_table = "posthog_pluginlogentry"
        verbose_name_plural = "plugin log entries"
        indexes = [
            models.Index(fields=["plugin_config_id", "-timestamp"], name="posthog_plugin_log_cfg_ts_idx"),
        ]
