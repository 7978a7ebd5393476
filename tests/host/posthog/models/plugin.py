"""Today's plugin models: inline plugins, a nullable updated_at, deleted/filters on configs, log entries in ClickHouse."""

import datetime
from dataclasses import dataclass
from uuid import UUID

from django.db import models


class Plugin(models.Model):
    class PluginType(models.TextChoices):
        LOCAL = "local", "local"
        CUSTOM = "custom", "custom"
        REPOSITORY = "repository", "repository"
        SOURCE = "source", "source"
        INLINE = "inline", "inline"

    organization = models.ForeignKey("posthog.Organization", on_delete=models.CASCADE, related_name="plugins", null=True)
    plugin_type = models.CharField(max_length=200, null=True, blank=True, choices=PluginType.choices, default=None)
    is_global = models.BooleanField(default=False)
    is_preinstalled = models.BooleanField(default=False)
    is_stateless = models.BooleanField(default=False, null=True, blank=True)
    name = models.CharField(max_length=200, null=True, blank=True)
    description = models.TextField(null=True, blank=True)
    url = models.CharField(max_length=800, null=True, blank=True, unique=True)
    icon = models.CharField(max_length=800, null=True, blank=True)
    config_schema = models.JSONField(default=dict, blank=True)
    tag = models.CharField(max_length=200, null=True, blank=True)
    archive = models.BinaryField(blank=True, null=True)
    latest_tag = models.CharField(max_length=800, null=True, blank=True)
    latest_tag_checked_at = models.DateTimeField(null=True, blank=True)
    capabilities = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict, null=True, blank=True)
    public_jobs = models.JSONField(default=dict, null=True, blank=True)
    error = models.JSONField(default=None, null=True, blank=True)
    from_json = models.BooleanField(default=False)
    from_web = models.BooleanField(default=False)
    source = models.TextField(blank=True, null=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(null=True, blank=True)
    log_level = models.IntegerField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name or f"ID {self.pk}"


class PluginConfig(models.Model):
    team = models.ForeignKey("posthog.Team", on_delete=models.CASCADE, null=True)
    plugin = models.ForeignKey(Plugin, on_delete=models.CASCADE)
    enabled = models.BooleanField(default=False)
    order = models.IntegerField()
    config = models.JSONField(default=dict)
    error = models.JSONField(default=None, null=True, blank=True)
    web_token = models.CharField(max_length=64, default=None, null=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    name = models.CharField(max_length=400, null=True, blank=True)
    description = models.CharField(max_length=1000, null=True, blank=True)
    deleted = models.BooleanField(default=False, null=True)
    filters = models.JSONField(null=True, blank=True)


class PluginAttachment(models.Model):
    team = models.ForeignKey("posthog.Team", on_delete=models.CASCADE, null=True)
    plugin_config = models.ForeignKey(PluginConfig, on_delete=models.CASCADE, null=True)
    key = models.CharField(max_length=200)
    content_type = models.CharField(max_length=200)
    file_name = models.CharField(max_length=200)
    file_size = models.IntegerField()
    contents = models.BinaryField()


class PluginStorage(models.Model):
    plugin_config = models.ForeignKey(PluginConfig, on_delete=models.CASCADE)
    key = models.CharField(max_length=200)
    value = models.TextField(blank=True, null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["plugin_config_id", "key"], name="posthog_unique_plugin_storage_key")]


@dataclass(frozen=True)
class PluginLogEntry:
    """Not a Django model any more: the entries are in ClickHouse."""

    id: UUID
    team_id: int
    plugin_id: int
    plugin_config_id: int
    timestamp: datetime.datetime
    source: str
    type: str
    message: str
    instance_id: UUID
