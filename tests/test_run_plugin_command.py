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

from tests.factories import create_plugin

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
    assert "[PLUGIN ERROR] ValueError: boom" in out.getvalue()


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
