"""``./manage.py run_plugin``: one plugin on events, in the server's sandbox, printed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.factories import create_plugin, create_plugin_config, create_team
from tests.manage_process import run_manage
from tests.plugins.sandbox_helpers import RAISING_PLUGIN

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MAIN = """
def process_event(event, meta):
    print('hello', meta.config['greeting'])
    event['properties']['greeting'] = meta.config['greeting']
    meta.storage.set('last', event['event'])
    event['properties']['stored'] = meta.storage.get('last')
    return None if event['event'] == 'drop' else event
"""
PLUGIN_JSON = {"name": "greeter", "config": [{"key": "greeting", "type": "string", "default": "hi"}]}


def _folder(tmp_path: Path, main: str = MAIN) -> Path:
    (tmp_path / "main.py").write_text(main)
    (tmp_path / "plugin.json").write_text(json.dumps(PLUGIN_JSON))
    return tmp_path


def _run(*args: str, **options: object) -> str:
    out = io.StringIO()
    call_command("run_plugin", *args, stdout=out, **options)
    return out.getvalue()


def test_runs_a_folder_plugin_and_prints_events_and_logs(tmp_path):
    """It prints each resulting event (or "dropped") and the plugin's log lines; config defaults apply."""
    output = _run(str(_folder(tmp_path)), event=['{"event": "a"}', '{"event": "drop"}'])
    lines = output.splitlines()
    first = json.loads(lines[0].split(": ", 1)[1])
    assert first["properties"]["greeting"] == "hi" and first["properties"]["stored"] == "a"
    assert first["properties"]["$plugins_succeeded"] == ["greeter (-1)"]
    assert lines[1] == "event 2: dropped"
    assert "[CONSOLE LOG] hello hi" in lines
    assert any(line.startswith("[SYSTEM INFO] Plugin loaded") for line in lines)


def test_config_values_from_the_command_line(tmp_path):
    """--config key=value overrides a default; JSON values are parsed."""
    output = _run(str(_folder(tmp_path)), event=['{"event": "a"}'], config=["greeting=\"hey\""])
    assert "[CONSOLE LOG] hello hey" in output.splitlines()


def test_runs_a_zip_archive(tmp_path):
    """It reads a zip archive with the plugin under one root folder."""
    archive = tmp_path / "plugin.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("greeter/main.py", MAIN)
        zipped.writestr("greeter/plugin.json", json.dumps(PLUGIN_JSON))
    assert "hello hi" in _run(str(archive), event=['{"event": "a"}'])


def test_runs_an_installed_plugin_by_id():
    """It loads an installed plugin's code from its row."""
    plugin = create_plugin(source="def process_event(event, meta):\n    event['event'] = 'seen'\n    return event\n")
    output = _run(str(plugin.id), event=['{"event": "a", "team_id": 5}'])
    assert json.loads(output.splitlines()[0].split(": ", 1)[1])["event"] == "seen"


def test_a_raising_plugin_exits_non_zero_and_prints_the_error(tmp_path):
    """It exits with an error when the plugin raises, after printing the event (unchanged) and the error."""
    folder = _folder(tmp_path, "def process_event(event, meta):\n    raise ValueError('boom')\n")
    out = io.StringIO()
    with pytest.raises(CommandError, match="ValueError: boom"):
        call_command("run_plugin", str(folder), event=['{"event": "a"}'], stdout=out)
    assert "[PLUGIN ERROR] Traceback (most recent call last):" in out.getvalue()
    assert "ValueError: boom" in out.getvalue().splitlines()


def test_an_endless_loop_is_stopped_by_the_time_limit(tmp_path):
    """It applies TASK_TIMEOUT (here --timeout 1) like the server."""
    folder = _folder(tmp_path, "def process_event(event, meta):\n    while True:\n        pass\n")
    with pytest.raises(CommandError, match="timed out after looping for 1 second"):
        _run(str(folder), event=['{"event": "a"}'], timeout=1.0)


def test_bad_input_is_a_clear_error(tmp_path):
    """It refuses a missing plugin, invalid event JSON, and a malformed --config."""
    with pytest.raises(CommandError, match="neither a folder"):
        _run("no/such/plugin", event=["{}"])
    with pytest.raises(CommandError, match="not valid JSON"):
        _run(str(_folder(tmp_path)), event=["{nope"])
    with pytest.raises(CommandError, match="key=value"):
        _run(str(_folder(tmp_path)), event=["{}"], config=["novalue"])


def test_new_plugin_scaffold_passes_its_test_and_runs_in_the_sandbox(tmp_path):
    """new_plugin writes a plugin whose own test passes and which run_plugin runs cleanly."""
    out = io.StringIO()
    call_command("new_plugin", "hello-world", directory=str(tmp_path), stdout=out)
    folder = tmp_path / "hello-world"
    assert sorted(p.name for p in folder.iterdir()) == ["main.py", "plugin.json", "test_main.py"]
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:django", "-c", os.devnull, "test_main.py"],
        capture_output=True, text=True, cwd=folder, timeout=60,
        # As a plugin author runs it: outside this project's Django settings.
        env={key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"},
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    output = _run(str(folder), event=['{"event": "$pageview"}'], config=["greeting=hey"])
    assert json.loads(output.splitlines()[0].split(": ", 1)[1])["properties"]["greeting"] == "hey"
    with pytest.raises(CommandError, match="already exists"):
        call_command("new_plugin", "hello-world", directory=str(tmp_path), stdout=out)
    with pytest.raises(CommandError, match="not a valid plugin name"):
        call_command("new_plugin", "Bad Name", directory=str(tmp_path), stdout=out)


def test_new_js_plugin_scaffold_passes_its_node_test_and_runs_in_a_v8_isolate(tmp_path):
    """new_plugin --js writes a JavaScript plugin whose `node --test` passes and which run_plugin runs, console and capture shown."""
    call_command("new_plugin", "hello-js", js=True, directory=str(tmp_path), stdout=io.StringIO())
    folder = tmp_path / "hello-js"
    assert sorted(p.name for p in folder.iterdir()) == ["index.js", "index.test.js", "plugin.json"]
    tested = subprocess.run(["node", "--test"], capture_output=True, text=True, cwd=folder, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    output = _run(str(folder), event=['{"event": "$pageview"}'], config=["greeting=hey"])
    assert json.loads(output.splitlines()[0].split(": ", 1)[1])["properties"]["greeting"] == "hey"
    (folder / "index.js").write_text(
        "exports.processEvent = (event) => {\n"
        "    console.info('seen', event.event)\n"
        "    posthog.capture('derived', { from: event.event })\n"
        "    return undefinedThing.x\n"
        "}\n"
    )
    out = io.StringIO()
    with pytest.raises((CommandError, SystemExit)):
        call_command("run_plugin", str(folder), event=['{"event": "$pageview"}'], stdout=out)
    text = out.getvalue()
    assert "[CONSOLE INFO] seen $pageview" in text and "derived" in text
    assert "ReferenceError: undefinedThing is not defined" in text and "index.js:4:" in text


# --- as a user runs it: a subprocess, from another working directory ---------------------

def _json_log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith('{"ts"')]


def test_an_installed_local_plugin_runs_by_id_with_its_installed_config_from_any_directory(tmp_path):
    """`run_plugin <id>` reads a relative file: url against BASE_DIR (the project), with the config stored for it."""
    team = create_team()
    plugin = create_plugin(organization=team.organization, name="Demo greeter", plugin_type="local", url="file:plugins/demo")
    config = create_plugin_config(team=team, plugin=plugin, config={"greeting": "Hej from the config", "style": "shout"})
    result = run_manage("run_plugin", str(plugin.id), "--event", '{"event": "$pageview"}', cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    event = json.loads(result.stdout.splitlines()[0].split(": ", 1)[1])
    assert event["properties"]["greeting"] == "HEJ FROM THE CONFIG" and event["team_id"] == config.team_id
    # Readable: no JSON log lines of the server between the plugin's lines.
    assert _json_log_lines(result.stdout + result.stderr) == []


def test_missing_required_config_keys_are_named_before_anything_runs(tmp_path):
    """A required key with no value (and no default) stops the run with the keys and where to set them."""
    schema = [{"key": "api_key", "type": "string", "required": True}, {"key": "host", "type": "string", "required": True}]
    plugin = create_plugin(source="def process_event(event, meta):\n    return event\n", config_schema=schema)
    config = create_plugin_config(plugin=plugin, config={"host": "example.com"})
    result = run_manage("run_plugin", str(plugin.id), "--event", "{}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"CommandError: Missing required config keys for {plugin.name}: api_key. "
        f"Set them on plugin config {config.id} (the admin) or with --config api_key=..."
    )
    assert "hello" not in result.stdout
    passed = run_manage("run_plugin", str(plugin.id), "--event", "{}", "--config", "api_key=k", cwd=tmp_path)
    assert passed.returncode == 0, passed.stderr


def test_a_plugin_with_configs_for_two_teams_asks_which(tmp_path):
    """With a config per team the command says which teams there are; --team picks one."""
    plugin = create_plugin(source="def process_event(event, meta):\n    event['properties']['c'] = meta.config['c']\n    return event\n")
    first = create_plugin_config(plugin=plugin, config={"c": "first"})
    second = create_plugin_config(plugin=plugin, config={"c": "second"})
    with pytest.raises(CommandError, match=f"has 2 configs \\(teams {first.team_id}, {second.team_id}\\): choose one with --team"):
        _run(str(plugin.id), event=["{}"])
    output = _run(str(plugin.id), event=["{}"], team=second.team_id)
    assert json.loads(output.splitlines()[0].split(": ", 1)[1])["properties"]["c"] == "second"


def test_a_missing_plugin_folder_says_which_path_was_tried(tmp_path):
    """An installed local plugin whose folder is gone names the folder and the BASE_DIR it was resolved against."""
    plugin = create_plugin(plugin_type="local", url="file:plugins/not-there")
    result = run_manage("run_plugin", str(plugin.id), "--event", "{}", cwd=tmp_path)
    assert result.returncode == 1
    root = Path(__file__).resolve().parents[1]
    assert f'Plugin folder "{root / "plugins" / "not-there"}" not found' in result.stderr
    assert f'resolved against BASE_DIR "{root}"' in result.stderr


def test_a_raising_plugin_prints_its_traceback_and_ends_with_the_cause(tmp_path):
    """The error shows the plugin's frames (main.py, lines, source), no server frame or path; the last line is the cause."""
    folder = tmp_path / "raising"
    folder.mkdir()
    (folder / "main.py").write_text(RAISING_PLUGIN)
    result = run_manage("run_plugin", "raising", "--event", '{"event": "a"}', cwd=tmp_path)
    assert result.returncode == 1
    assert '[PLUGIN ERROR] Traceback (most recent call last):\n  File "main.py", line 6, in process_event\n    helper(event)\n' in result.stdout
    assert '  File "main.py", line 2, in helper\n    return event["properties"]["missing"]\nKeyError: \'missing\'' in result.stdout
    assert "plugin_server" not in result.stdout + result.stderr and str(Path(__file__).parent) not in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "CommandError: the plugin failed: KeyError: 'missing'"


def test_a_syntax_error_names_the_plugins_file_and_is_the_last_line(tmp_path):
    """A syntax error points at main.py's line, and the command ends with the SyntaxError, not 'failed to load'."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "main.py").write_text("def process_event(event, meta):\n    return event +\n")
    result = run_manage("run_plugin", str(folder), "--event", "{}", cwd=tmp_path)
    assert result.returncode == 1
    assert '  File "main.py", line 2\n    return event +\n' in result.stdout
    assert "plugin-None" not in result.stdout + result.stderr
    # A dry run disables nothing, and says so.
    assert "[SYSTEM ERROR] Plugin failed to load (a server would disable it)" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "CommandError: the plugin failed: SyntaxError: invalid syntax"
