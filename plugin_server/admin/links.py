"""Admin URLs of a model, whichever app it belongs to.

The models come from the stand-ins (app ``posthog_standin``) on their own
and from PostHog's app (``posthog``) inside the monolith, so admin URL names
are built from the model's own app label, never spelled out.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model
from django.urls import reverse


def admin_url(model: type[Model], view: str, *args: Any) -> str:
    """The URL of ``view`` (changelist, add, change, ...) of ``model`` in the admin."""
    meta = model._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_{view}", args=args)
