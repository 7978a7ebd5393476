"""The capture API's routes, with or without the trailing slash (a POST cannot be redirected)."""

from django.urls import re_path

from plugin_server.capture import views

CAPTURE_PATHS = ("e", "i/v0/e", "capture", "track", "batch", "engage", "s")

urlpatterns = [
    *(re_path(rf"^{path}/?$", views.capture, name=f"capture-{path.replace('/', '-')}") for path in CAPTURE_PATHS),
    re_path(r"^decide/?$", views.decide, name="capture-decide"),
    re_path(r"^flags/?$", views.flags, name="capture-flags"),
    re_path(r"^array/(?P<token>[^/]+)/config$", views.remote_config, name="capture-remote-config"),
    re_path(r"^array/(?P<token>[^/]+)/config\.js$", views.remote_config_js, name="capture-remote-config-js"),
]
