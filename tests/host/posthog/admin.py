"""PostHog registers its own user admin; the plugin server's admin brings the rest."""

from django.contrib import admin

from posthog.models.user import User


@admin.register(User)
class UserAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("email", "first_name", "is_staff")
