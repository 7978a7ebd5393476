import uuid

from django.db import models


class PropertyDefinition(models.Model):
    """Today's columns: ``type`` is NOT NULL (no database default)."""

    class Type(models.IntegerChoices):
        EVENT = 1, "event"
        PERSON = 2, "person"
        GROUP = 3, "group"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    team = models.ForeignKey("posthog.Team", on_delete=models.CASCADE, related_name="property_definitions")
    name = models.CharField(max_length=400)
    is_numerical = models.BooleanField(default=False)
    property_type = models.CharField(max_length=50, null=True, blank=True)
    type = models.PositiveSmallIntegerField(default=Type.EVENT, choices=Type.choices)
    group_type_index = models.PositiveSmallIntegerField(null=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "name", "type"], name="posthog_propertydefinition_uniq")]
