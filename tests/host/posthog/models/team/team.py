import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models


class Team(models.Model):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    organization = models.ForeignKey("posthog.Organization", on_delete=models.CASCADE, related_name="teams")
    api_token = models.CharField(max_length=200, unique=True, null=True, blank=True)
    app_urls = ArrayField(models.CharField(max_length=200, null=True), default=list, blank=True)
    name = models.CharField(max_length=200, default="Default project")
    slack_incoming_webhook = models.CharField(max_length=500, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    anonymize_ips = models.BooleanField(default=False)
    completed_snippet_onboarding = models.BooleanField(default=False)
    ingested_event = models.BooleanField(default=False)
    session_recording_opt_in = models.BooleanField(default=False)
    opt_out_capture = models.BooleanField(default=False)
    is_demo = models.BooleanField(default=False)
    timezone = models.CharField(max_length=240, default="UTC")

    def __str__(self) -> str:
        return self.name
