"""A plugin's traceback as its author sees it: its own frames and file, the cause last.

In-process compiles for the formatting itself, then real workers for what
reaches ``posthog_pluginconfig.error`` and the plugin log.
"""

from __future__ import annotations

import logging

import pytest

from plugin_server.exceptions import PluginLoadError, PluginTimeout
from plugin_server.models import PluginLogEntry
from plugin_server.plugins.sandbox import compile_plugin
from plugin_server.plugins.tracebacks import code_traceback
from tests.plugins.sandbox_helpers import RAISING_PLUGIN, plugin_code
from tests.workers.conftest import make_pool  # noqa: F401  (fixture)
from tests.workers.helpers import event, install

def _no_server_trace(text: str) -> None:
    """Nothing of the server shows: no module of ours, no path, no compiled name."""
    for leak in ("plugin_server", "site-packages", "/", "plugin-", "call_with_time_limit", "RestrictedPython"):
        assert leak not in text, f"{leak!r} in:\n{text}"


def test_a_raising_plugin_shows_its_own_frames_lines_and_the_cause_last() -> None:
    """It keeps only the plugin's frames, named main.py with their lines and source, and ends with the exception."""
    code = plugin_code(RAISING_PLUGIN)
    exports = compile_plugin(code, {})
    with pytest.raises(KeyError) as caught:
        assert exports.process_event is not None
        exports.process_event({"properties": {}}, None)
    text = code_traceback(caught.value, code)
    assert text.splitlines() == [
        "Traceback (most recent call last):",
        '  File "main.py", line 6, in process_event',
        "    helper(event)",
        '  File "main.py", line 2, in helper',
        '    return event["properties"]["missing"]',
        "KeyError: 'missing'",
    ]


def test_an_error_in_the_module_body_shows_the_line_and_the_real_cause() -> None:
    """The loader's wrapper (no plugin frame) gives way to its cause: the NameError and its line are what shows."""
    code = plugin_code("import json\n\nVALUE = undefined_name\n")
    with pytest.raises(PluginLoadError) as caught:
        compile_plugin(code, {})
    text = code_traceback(caught.value, code)
    _no_server_trace(text)
    assert '  File "main.py", line 3, in <module>\n    VALUE = undefined_name' in text
    assert text.splitlines()[-1] == "NameError: name 'undefined_name' is not defined"


def test_a_syntax_error_names_the_plugins_file_line_and_column() -> None:
    """A syntax error points at main.py with a caret, and its message names main.py, not an internal name."""
    code = plugin_code("def process_event(event, meta):\n    return event +\n")
    with pytest.raises(PluginLoadError) as caught:
        compile_plugin(code, {})
    assert str(caught.value) == "SyntaxError: invalid syntax (main.py, line 2, column 19)"
    text = code_traceback(caught.value, code)
    _no_server_trace(text)
    assert text.splitlines() == ['  File "main.py", line 2', "    return event +", "                  ^", "SyntaxError: invalid syntax"]


def test_an_error_raised_while_handling_another_shows_both_in_order() -> None:
    """A plugin that catches one error and raises another shows both, linked as Python links them."""
    code = plugin_code(
        """\
        def process_event(event, meta):
            try:
                return event["nope"]
            except KeyError as error:
                raise ValueError("no nope") from error
        """
    )
    exports = compile_plugin(code, {})
    with pytest.raises(ValueError) as caught:
        assert exports.process_event is not None
        exports.process_event({}, None)
    text = code_traceback(caught.value, code)
    _no_server_trace(text)
    lines = text.splitlines()
    assert lines.index("KeyError: 'nope'") < lines.index("The above exception was the direct cause of the following exception:")
    assert lines[-1] == "ValueError: no nope"


def test_an_exception_of_the_server_or_the_plugin_is_named_without_its_module() -> None:
    """The last line names the class only: no server module (plugin_server.exceptions.X), no plugin-<id> module."""
    code = plugin_code(
        """\
        class QuotaExceeded(Exception):
            pass


        def process_event(event, meta):
            raise QuotaExceeded("over the quota")
        """
    )
    exports = compile_plugin(code, {})
    with pytest.raises(Exception) as caught:
        assert exports.process_event is not None
        exports.process_event({}, None)
    assert code_traceback(caught.value, code).splitlines()[-1] == "QuotaExceeded: over the quota"
    timeout = PluginTimeout("Script execution timed out after looping for 1 second on line 3:4")
    assert code_traceback(timeout, code) == "PluginTimeout: Script execution timed out after looping for 1 second on line 3:4"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_the_recorded_error_and_the_plugin_log_hold_the_plugin_traceback(make_pool):
    """In a real worker, posthog_pluginconfig.error.stack and the PLUGIN/ERROR entry show the plugin's frames only."""
    config = install(RAISING_PLUGIN)
    pool = make_pool(concurrency=1)
    pool.process_events([event(config.team_id)])
    config.refresh_from_db()
    stack = config.error["stack"]
    _no_server_trace(stack)
    assert '  File "main.py", line 2, in helper' in stack and stack.splitlines()[-1] == "KeyError: 'missing'"
    assert config.error["message"] == "'missing'" and config.error["name"] == "KeyError"
    entry = PluginLogEntry.objects.get(plugin_config_id=config.id, source="PLUGIN", type="ERROR")
    assert entry.message == stack


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_a_plugin_that_fails_to_load_records_its_cause_not_a_server_traceback(make_pool, caplog):
    """A syntax error recorded by a real worker names main.py and ends with the SyntaxError; the log line names all."""
    config = install("def process_event(event, meta)\n    return None\n")
    pool = make_pool(concurrency=1)
    with caplog.at_level(logging.WARNING, logger="plugin_server.plugins.meta.errors"):
        pool.process_events([event(config.team_id)])
    config.refresh_from_db()
    assert (
        f"plugin {config.plugin.name} (ID {config.plugin_id}) disabled for team {config.team_id} (config {config.id})"
        " after failing to load: SyntaxError: expected ':' (main.py, line 1, column 31)"
    ) in caplog.messages
    _no_server_trace(config.error["stack"])
    assert config.error["stack"].startswith('  File "main.py", line 1')
    assert config.error["stack"].splitlines()[-1] == "SyntaxError: expected ':'"
