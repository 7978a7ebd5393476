"""``./manage.py healthcheck``: is a plugin server alive?

Prints the last ping time and exits 0 when the ping key is in Redis;
exits 1 otherwise.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from plugin_server.status import read_ping


class Command(BaseCommand):
    help = "Exit 0 if a plugin server wrote its Redis ping key in the last minute, else 1."

    def handle(self, *args: Any, **options: Any) -> None:
        ping = read_ping()
        if ping is None:
            self.stderr.write("No plugin server is alive (no ping key in Redis).")
            sys.exit(1)
        self.stdout.write(f"Plugin server alive, last ping at {ping}")
