"""System checks of the capture settings."""

from __future__ import annotations

from django.test import override_settings

from plugin_server.checks import check_capture_settings


def ids() -> list[str]:
    return [problem.id or "" for problem in check_capture_settings(None)]


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    """A CAPTURE_TRUSTED_PROXIES entry that is neither is an error (E005), before any request meets it."""
    with override_settings(CAPTURE_TRUSTED_PROXIES="10.0.0.0/8, 192.168.1.7, ::1"):
        assert ids() == []
    with override_settings(CAPTURE_TRUSTED_PROXIES="10.0.0.0/8,proxy.internal"):
        assert ids() == ["plugin_server.E005"]


def test_capture_without_a_web_server_is_a_warning() -> None:
    """CAPTURE_ENABLED with DISABLE_WEB: nothing would serve it (W003)."""
    with override_settings(CAPTURE_ENABLED=True, DISABLE_WEB=True):
        assert ids() == ["plugin_server.W003"]
    with override_settings(CAPTURE_ENABLED=True, DISABLE_WEB=False):
        assert ids() == []
