"""URLs: the Django admin and PostHog's capture API (docs/capture.md)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("plugin_server.capture.urls")),
]
