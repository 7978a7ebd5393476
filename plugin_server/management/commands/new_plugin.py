"""``./manage.py new_plugin NAME``: a new plugin folder with a passing test.

Writes ``NAME/plugin.json`` (name, description, main, one config field),
``NAME/main.py`` (a ``process_event`` that uses the config) and
``NAME/test_main.py`` (plain pytest, no server needed), then says how to run
the plugin in the real sandbox with ``run_plugin``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

MAIN = '''"""{name}: a PostHog plugin.

What a plugin may define, what ``meta`` offers and the sandbox's rules are in
the plugin server's docs/plugins.md.
"""


def setup_plugin(meta):
    # Runs once per worker before any event; keep state in meta.global_.
    meta.global_["greeting"] = meta.config["greeting"]


def process_event(event, meta):
    # Return the event (changed or not) to keep it, or None to drop it.
    event["properties"]["greeting"] = meta.global_["greeting"]
    return event
'''

TEST = '''"""Tests of {name}. Run them with ``python -m pytest`` in this folder.

They call the plugin's functions directly, with a small stand-in for ``meta``.
To run the plugin in the server's sandbox, with its limits:

    ./manage.py run_plugin {name} --event '{{"event": "$pageview"}}' --config greeting=hello
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("plugin_main", pathlib.Path(__file__).with_name("main.py"))
plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin)


class Meta:
    """Just what this plugin uses of meta."""

    def __init__(self, config):
        self.config = config
        self.global_ = {{}}


def test_process_event_adds_the_greeting():
    meta = Meta({{"greeting": "hello"}})
    plugin.setup_plugin(meta)
    event = {{"event": "$pageview", "distinct_id": "someone", "team_id": 1, "properties": {{}}}}
    assert plugin.process_event(event, meta)["properties"]["greeting"] == "hello"
'''


class Command(BaseCommand):
    help = "Create a new plugin folder (plugin.json, main.py and a passing test)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="plugin name: lower-case letters, digits, - and _")
        parser.add_argument("--directory", default=".", help="where to create the folder (default: here)")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["name"]
        if not NAME_PATTERN.match(name):
            raise CommandError(f"{name!r} is not a valid plugin name: use lower-case letters, digits, '-' and '_'")
        folder = Path(options["directory"]) / name
        if folder.exists():
            raise CommandError(f"{folder} already exists")
        folder.mkdir(parents=True)
        plugin_json = {
            "name": name,
            "description": f"{name}: describe what it does",
            "url": "",
            "main": "main.py",
            "config": [{"key": "greeting", "name": "Greeting", "type": "string", "default": "hello", "required": False}],
        }
        (folder / "plugin.json").write_text(json.dumps(plugin_json, indent=2) + "\n")
        (folder / "main.py").write_text(MAIN.format(name=name))
        (folder / "test_main.py").write_text(TEST.format(name=name))
        self.stdout.write(f"Created {folder}/ with plugin.json, main.py and test_main.py")
        self.stdout.write(f"  test it:  (cd {folder} && python -m pytest)")
        self.stdout.write(f"  run it:   ./manage.py run_plugin {folder} --event '{{\"event\": \"$pageview\"}}'")
