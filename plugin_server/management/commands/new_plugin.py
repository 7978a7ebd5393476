"""``./manage.py new_plugin NAME``: a new plugin folder with a passing test.

Writes ``NAME/plugin.json`` (name, description, main, one config field),
``NAME/main.py`` (a ``process_event`` that uses the config) and
``NAME/test_main.py`` (plain pytest, no server needed), then says how to run
the plugin in the real sandbox with ``run_plugin``. With ``--js``: ``index.js``
(CommonJS, as the original's plugins) and ``index.test.js`` (Node.js's own
``node --test``) instead.
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


JS_MAIN = """// {name}: a PostHog plugin in JavaScript. What a plugin may export, what meta
// offers and the sandbox's rules are in the plugin server's docs/js-plugins.md.

async function setupPlugin({{ config, global }}) {{
    // Runs once per worker before any event; keep state in meta.global.
    global.greeting = config.greeting
}}

async function processEvent(event, {{ global }}) {{
    // Return the event (changed or not) to keep it, or nothing to drop it.
    event.properties = {{ ...event.properties, greeting: global.greeting }}
    return event
}}

module.exports = {{ setupPlugin, processEvent }}
"""

JS_TEST = """// Tests of {name}. Run them with `node --test` in this folder (Node.js 18 or later).
// To run the plugin in the server's sandbox, with its limits:
//     ./manage.py run_plugin {name} --event '{{"event": "$pageview"}}' --config greeting=hello
const test = require('node:test')
const assert = require('node:assert')
const {{ setupPlugin, processEvent }} = require('./index.js')

test('processEvent adds the greeting', async () => {{
    const meta = {{ config: {{ greeting: 'hello' }}, global: {{}} }}
    await setupPlugin(meta)
    const event = {{ event: '$pageview', distinct_id: 'someone', team_id: 1, properties: {{}} }}
    assert.strictEqual((await processEvent(event, meta)).properties.greeting, 'hello')
}})
"""


class Command(BaseCommand):
    help = "Create a new plugin folder (plugin.json, main.py and a passing test)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="plugin name: lower-case letters, digits, - and _")
        parser.add_argument("--directory", default=".", help="where to create the folder (default: here)")
        parser.add_argument("--js", action="store_true", help="a JavaScript plugin (index.js, index.test.js)")

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
            "main": "index.js" if options["js"] else "main.py",
            "config": [{"key": "greeting", "name": "Greeting", "type": "string", "default": "hello", "required": False}],
        }
        (folder / "plugin.json").write_text(json.dumps(plugin_json, indent=2) + "\n")
        files = {"index.js": JS_MAIN, "index.test.js": JS_TEST} if options["js"] else {"main.py": MAIN, "test_main.py": TEST}
        for filename, template in files.items():
            (folder / filename).write_text(template.format(name=name))
        self.stdout.write(f"Created {folder}/ with plugin.json, {' and '.join(files)}")
        test_command = "node --test" if options["js"] else "python -m pytest"
        self.stdout.write(f"  test it:  (cd {folder} && {test_command})")
        self.stdout.write(f"  run it:   ./manage.py run_plugin {folder} --event '{{\"event\": \"$pageview\"}}'")
