from django.db import models


class Cohort(models.Model):
    name = models.CharField(max_length=400, null=True, blank=True)
    team = models.ForeignKey("posthog.Team", on_delete=models.CASCADE)
    deleted = models.BooleanField(default=False)


class CohortPeople(models.Model):
    """In the persons database (PostHog's router), so its cohort is across databases."""

    id = models.BigAutoField(primary_key=True)
    cohort = models.ForeignKey(Cohort, on_delete=models.CASCADE, db_constraint=False)
    person = models.ForeignKey("posthog.Person", on_delete=models.CASCADE)
    version = models.IntegerField(blank=True, null=True)
