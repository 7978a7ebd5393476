"""Helpers for the sandbox tests: compile a plugin from source text, run one of its functions."""

from __future__ import annotations

import textwrap
from typing import Any

from plugin_server.plugins.code import PluginCode
from plugin_server.plugins.sandbox import PluginExports, call_with_time_limit, compile_plugin

_next_id = iter(range(10_000, 1_000_000))

# A plugin whose process_event fails two calls deep (line 2, called from line 6): for traceback tests.
RAISING_PLUGIN = """\
def helper(event):
    return event["properties"]["missing"]


def process_event(event, meta):
    helper(event)
    return event
"""


def plugin_code(source: str, plugin_id: int | None = None) -> PluginCode:
    """A PluginCode for ``source`` (dedented), as the loader would hand it over."""
    plugin_id = next(_next_id) if plugin_id is None else plugin_id
    return PluginCode(
        plugin_id=plugin_id,
        name=f"test-plugin-{plugin_id}",
        digest=f"plugin test-plugin-{plugin_id} ID {plugin_id} (organization ID test)",
        main_filename="main.py",
        source=textwrap.dedent(source),
        plugin_json={},
        config_schema={},
    )


def compile_source(source: str, printed: list[tuple[Any, ...]] | None = None, **injected: object) -> PluginExports:
    """Compile ``source`` with a ``print`` that appends its arguments to ``printed``."""
    lines = printed if printed is not None else []
    return compile_plugin(plugin_code(source), {"print": lambda *args: lines.append(args), **injected})


def run_job(source: str, job: str = "run", *args: Any, seconds: float = 5.0) -> Any:
    """Compile ``source`` and call its ``jobs[job](*args)`` under a time limit."""
    exports = compile_source(source)
    return call_with_time_limit(exports.jobs[job], *args, seconds=seconds)


# Plugin source: a dict subclass whose every method a copy might call never returns.
STICKY_DICT = """
class Sticky(dict):
    def items(self):
        while True:
            pass
    def get(self, key, default=None):
        while True:
            pass
    def keys(self):
        while True:
            pass
    def values(self):
        while True:
            pass
"""
