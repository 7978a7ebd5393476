"""As today's PostHog: bigint ids, a version column, in the persons database."""

from django.db import models

from posthog.models.utils import UUIDT


class Person(models.Model):
    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(auto_now_add=True, blank=True)
    properties_last_updated_at = models.JSONField(default=dict, null=True, blank=True)
    properties_last_operation = models.JSONField(null=True, blank=True)
    # The teams are in the other database: no constraint across databases.
    team = models.ForeignKey("posthog.Team", on_delete=models.CASCADE, db_constraint=False)
    properties = models.JSONField(default=dict)
    is_user = models.IntegerField(null=True, blank=True, db_column="is_user_id")
    is_identified = models.BooleanField(default=False)
    uuid = models.UUIDField(db_index=True, default=UUIDT, editable=False)
    version = models.BigIntegerField(null=True, blank=True)


class PersonDistinctId(models.Model):
    id = models.BigAutoField(primary_key=True)
    team = models.ForeignKey("posthog.Team", on_delete=models.CASCADE, db_index=False, db_constraint=False)
    person = models.ForeignKey(Person, on_delete=models.CASCADE)
    distinct_id = models.CharField(max_length=400)
    version = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "distinct_id"], name="unique distinct_id for team")]
