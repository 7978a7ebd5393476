"""``./manage.py run_plugin_server``: run the plugin server until SIGTERM / SIGINT.

Thin on purpose: settings → :class:`plugin_server.server.Server` → exit code.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from plugin_server.server import Server

logger = logging.getLogger(__name__)

IDLE_LOG_INTERVAL = 30.0


class Command(BaseCommand):
    help = "Run the plugin server: consume ingestion tasks, run plugins, store events (stops cleanly on SIGTERM/SIGINT)."
    requires_system_checks = "__all__"

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PLUGIN_SERVER_IDLE:
            self._idle()
            return
        sys.exit(Server().run())

    def _idle(self) -> None:
        # PLUGIN_SERVER_IDLE (spec: plugins.md §9.1): run, do nothing, say so.
        forever = threading.Event()
        while not forever.wait(IDLE_LOG_INTERVAL):
            logger.info("plugin server idle (PLUGIN_SERVER_IDLE is set)")
