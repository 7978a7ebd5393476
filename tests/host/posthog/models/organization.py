import uuid

from django.conf import settings
from django.db import models


class Organization(models.Model):
    class PluginsAccessLevel(models.IntegerChoices):
        NONE = 0, "none"
        CONFIG = 3, "config"
        INSTALL = 6, "install"
        ROOT = 9, "root"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    plugins_access_level = models.PositiveSmallIntegerField(default=PluginsAccessLevel.CONFIG, choices=PluginsAccessLevel.choices)

    def __str__(self) -> str:
        return self.name


class OrganizationMembership(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="organization_memberships")
    level = models.PositiveSmallIntegerField(default=1)
    joined_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization_id", "user_id"], name="unique_organization_membership")]
