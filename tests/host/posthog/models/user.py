import uuid
from typing import Any

from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.db import models


class UserManager(BaseUserManager["User"]):
    """As PostHog's: users log in with their email; there is no username."""

    def create_user(self, email: str, password: str | None = None, first_name: str = "", **extra: Any) -> "User":
        user = self.model(email=self.normalize_email(email), first_name=first_name, **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> "User":
        return self.create_user(email, password, is_staff=True, is_superuser=True, **extra)


class User(AbstractUser):
    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    username = None  # type: ignore[assignment]
    email = models.EmailField(unique=True)
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    distinct_id = models.CharField(max_length=200, null=True, blank=True, unique=True)

    objects = UserManager()  # type: ignore[misc]
