"""``./manage.py print_config``: the effective configuration, secrets masked."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from plugin_server.config import get_config


def env_form(value: Any) -> str:
    """A value as it would be written in the environment."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


class Command(BaseCommand):
    help = "Print the effective configuration (one NAME=value per line), with passwords and keys masked."
    # Printing must work while a system check fails: that is when it is needed.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object with typed values")

    def handle(self, *args: Any, **options: Any) -> None:
        items = list(get_config().masked_items())
        if options["json"]:
            self.stdout.write(json.dumps(dict(items), indent=2))
            return
        for name, value in items:
            self.stdout.write(f"{name}={env_form(value)}")
