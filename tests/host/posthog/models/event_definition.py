import uuid

from django.db import models


class EventDefinition(models.Model):
    """Today's columns: no 30-day usage columns any more."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    team = models.ForeignKey("posthog.Team", on_delete=models.CASCADE, related_name="event_definitions")
    name = models.CharField(max_length=400)
    created_at = models.DateTimeField(default=None, null=True)
    last_seen_at = models.DateTimeField(default=None, null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="posthog_eventdefinition_team_id_name_uniq")]
