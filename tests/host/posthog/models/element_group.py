from django.db import models


class ElementGroup(models.Model):
    team = models.ForeignKey("posthog.Team", on_delete=models.CASCADE)
    hash = models.CharField(max_length=400, null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "hash"], name="unique hash for each team")]
