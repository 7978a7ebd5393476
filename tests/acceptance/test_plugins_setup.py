"""acceptance.md "Plugin setup and running" (plugins.test.ts), "Teardown", "Guards" (vm.timeout.test.ts) and
"Console extension", translated to Python plugins: plugin 60 / config 39 of team 2 in real worker processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from plugin_server.models import Plugin, PluginConfig, PluginLogEntry
from tests.acceptance.plugin_fixtures import (  # noqa: F401  (fixtures)
    PASS_THROUGH,
    PLUGIN_NAME,
    clean_plugin_cache,
    install_spec,
    pool,
    server,
    spec_config,
    spec_event,
    spec_plugin,
    zip_archive,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.redis]

NO_TASKS = {"runEveryMinute": [], "runEveryHour": [], "runEveryDay": []}
MARK_PROCESSED = "def process_event(event, meta):\n    event['properties']['processed'] = True\n    return event\n"


def test_setup_plugins_and_run_process_event(pool) -> None:  # type: ignore[no-untyped-def]
    """Plugin 60, config 39, attachment 42666: the pool knows config 39 (team 2, plugin 60, order 0, its config);
    the plugin sees attachments {maxmindMmdb: octet-stream, test.txt, b"test"}; the old error is cleared; the
    chain sets processed = true."""
    source = MARK_PROCESSED.replace(
        "    return event\n",
        "    event['properties']['attachment'] = [(k, v['content_type'], v['file_name'], v['contents'].decode(),"
        " isinstance(v['contents'], bytes))"
        " for k, v in meta.attachments.items()]\n    return event\n",
    )
    install_spec(source, error={"message": "old", "time": "2020-01-01T00:00:00Z"})
    started = pool()
    spec = started.inventory.specs[39]
    assert started.inventory.chains[2] == (39,)
    assert (spec.plugin_config_id, spec.team_id, spec.plugin_id) == (39, 2, 60)
    assert spec.config == {"localhostIP": "94.224.212.175"}
    (out,) = started.process_events([spec_event()])
    assert out["properties"]["processed"] is True
    assert out["properties"]["attachment"] == [["maxmindMmdb", "application/octet-stream", "test.txt", "test", True]]
    assert PluginConfig.objects.get(id=39).error is None


def test_plugin_returns_null(pool) -> None:  # type: ignore[no-untyped-def]
    """process_event returns None → the chain drops the event."""
    install_spec("def process_event(event, meta):\n    return None\n")
    assert pool().process_events([spec_event()]) == []


def test_plugin_meta_has_what_it_should_have(pool) -> None:  # type: ignore[no-untyped-def]
    """setup stores global_['key'] = 'value'; process_event sees meta.attachments, cache, config, geoip, global_,
    jobs, storage (plus python-plugins.md's logger and fetch), config {localhostIP}, global {key: value}."""
    install_spec(
        "def setup_plugin(meta):\n    meta.global_['key'] = 'value'\n"
        "def process_event(event, meta):\n"
        "    names = ['attachments', 'cache', 'config', 'geoip', 'global_', 'jobs', 'storage', 'logger', 'fetch']\n"
        "    event['properties']['has'] = [name for name in names if hasattr(meta, name)]\n"
        "    event['properties']['config'] = dict(meta.config)\n"
        "    event['properties']['global'] = dict(meta.global_)\n"
        "    event['properties']['attachment_keys'] = sorted(meta.attachments)\n"
        "    return event\n"
    )
    properties = pool().process_events([spec_event()])[0]["properties"]
    assert properties["has"] == ["attachments", "cache", "config", "geoip", "global_", "jobs", "storage", "logger", "fetch"]
    assert properties["config"] == {"localhostIP": "94.224.212.175"}
    assert properties["global"] == {"key": "value"}
    assert properties["attachment_keys"] == ["maxmindMmdb"]
    assert sorted(properties) == ["$plugins_failed", "$plugins_succeeded", "attachment_keys", "config", "global", "has"]


BROKEN = "def process_event(event, meta)\n    event['properties']['processed'] = True\n    return event\n"


def test_archive_plugin_with_broken_code_does_not_do_much(pool) -> None:  # type: ignore[no-untyped-def]
    """A syntax error in the archive's main.py → no scheduled tasks, the event comes back unchanged, the error
    recorded on config 39 is a SyntaxError naming the line."""
    install_spec(BROKEN + "def run_every_minute(meta):\n    return 1\n")
    started = pool()
    event = spec_event()
    assert started.process_events([dict(event, properties={})]) == [event]
    assert started.scheduled_tasks() == NO_TASKS
    error = PluginConfig.objects.get(id=39).error
    assert "SyntaxError" in (error.get("name", "") + error["message"]) and "line 1" in error["message"]


def test_local_plugin_with_broken_code_does_not_do_much(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same for a `file:` plugin folder."""
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "main.py").write_text(BROKEN)
    spec_config(spec_plugin(plugin_type=Plugin.PluginType.LOCAL, url="file:broken", archive=None))
    started = pool(base_dir=str(tmp_path))
    event = spec_event()
    assert started.process_events([dict(event, properties={})]) == [event]
    assert started.scheduled_tasks() == NO_TASKS
    error = PluginConfig.objects.get(id=39).error
    assert "SyntaxError" in (error.get("name", "") + error["message"])


def test_plugin_changing_team_id_prevents_ingestion(pool) -> None:  # type: ignore[no-untyped-def]
    """process_event sets team_id = 400 → the chain drops the event."""
    install_spec("def process_event(event, meta):\n    event['team_id'] = 400\n    return event\n")
    assert pool().process_events([spec_event()]) == []


def test_events_have_property_plugins_succeeded(pool) -> None:  # type: ignore[no-untyped-def]
    """A pass-through plugin → the input plus properties {$plugins_failed: [], $plugins_succeeded:
    ["test-maxmind-plugin (39)"]}."""
    install_spec(PASS_THROUGH)
    (out,) = pool().process_events([spec_event()])
    assert out == {**spec_event(), "properties": {"$plugins_failed": [], "$plugins_succeeded": [f"{PLUGIN_NAME} (39)"]}}


def test_local_plugin_with_broken_plugin_json(pool, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A `file:` plugin whose plugin.json is not JSON → config 39's error contains `Could not load posthog config
    at `; no scheduled tasks."""
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "plugin.json").write_text("{ this is not json")
    (tmp_path / "broken" / "main.py").write_text("def run_every_minute(meta):\n    return 1\n")
    spec_config(spec_plugin(plugin_type=Plugin.PluginType.LOCAL, url="file:broken", archive=None))
    started = pool(base_dir=str(tmp_path))
    assert started.scheduled_tasks() == NO_TASKS
    assert "Could not load posthog config at " in PluginConfig.objects.get(id=39).error["message"]


def test_plugin_with_http_urls_must_have_an_archive(pool) -> None:  # type: ignore[no-untyped-def]
    """Global plugin 60 with an https url and no archive → the spec's exact error on config 39; no tasks."""
    spec_config(spec_plugin(archive=None, is_global=True))
    started = pool()
    assert started.scheduled_tasks() == NO_TASKS
    assert PluginConfig.objects.get(id=39).error["message"] == (
        "Tried using undownloaded remote plugin test-maxmind-plugin ID 60 (organization ID "
        "ca30f2ec-e9a4-4001-bf27-3ef194086068 - global), which is not supported!"
    )


def test_plugin_with_broken_archive_does_not_load(pool) -> None:  # type: ignore[no-untyped-def]
    """Archive bytes `this is not a zip` → error `Could not read archive as .zip or .tgz`; no tasks."""
    spec_config(spec_plugin(archive=b"this is not a zip"))
    started = pool()
    assert started.scheduled_tasks() == NO_TASKS
    assert PluginConfig.objects.get(id=39).error["message"] == "Could not read archive as .zip or .tgz"


def test_plugin_config_order(pool) -> None:  # type: ignore[no-untyped-def]
    """Plugins 60, 61, 62 each append their id to properties.plugins; configs 39 (order 2), 40 (order 1, plugin 61),
    41 (order 3, plugin 62) → team 2's chain is 40, 39, 41; two events each end with plugins = [61, 60, 62]."""
    for plugin_id, config_id, order in ((60, 39, 2), (61, 40, 1), (62, 41, 3)):
        source = (
            "def process_event(event, meta):\n"
            f"    event['properties']['plugins'] = event['properties'].get('plugins', []) + [{plugin_id}]\n"
            "    return event\n"
        )
        plugin = spec_plugin(source, plugin_id=plugin_id)
        spec_config(plugin, config_id=config_id, attachment=False, order=order)
    started = pool()
    assert started.inventory.chains[2] == (40, 39, 41)
    out = started.process_events([spec_event(), spec_event()])
    assert [e["properties"]["plugins"] for e in out] == [[61, 60, 62], [61, 60, 62]]


def test_load_schedule_once_all_plugins_are_ready(pool) -> None:  # type: ignore[no-untyped-def]
    """Configs 1 (no instance: broken code), 2 (run_every_minute = None, run_every_hour a function), 3
    (run_every_minute and foo functions) → {runEveryMinute: [3], runEveryHour: [2], runEveryDay: []}."""
    sources = {
        1: "def process_event(event, meta)\n    return event\n",
        2: "run_every_minute = None\ndef run_every_hour(meta):\n    return 1\n",
        3: "def run_every_minute(meta):\n    return 1\ndef foo(meta):\n    return 1\n",
    }
    for config_id, source in sources.items():
        plugin = spec_plugin(source, plugin_id=60 + config_id)
        spec_config(plugin, config_id=config_id, attachment=False, order=config_id)
    assert pool(concurrency=2).scheduled_tasks() == {"runEveryMinute": [3], "runEveryHour": [2], "runEveryDay": []}


# --- Teardown (teardown.test.ts) --------------------------------------------------------


def test_teardown_code_runs_when_stopping(pool) -> None:  # type: ignore[no-untyped-def]
    """teardown_plugin raises `This Happened In The Teardown Palace`: config 39's error is null while running,
    and that message once the pool stops."""
    install_spec(PASS_THROUGH + "def teardown_plugin(meta):\n    raise RuntimeError('This Happened In The Teardown Palace')\n")
    started = pool()
    started.process_events([spec_event()])
    assert PluginConfig.objects.get(id=39).error is None
    started.stop()
    assert PluginConfig.objects.get(id=39).error["message"] == "This Happened In The Teardown Palace"


# --- Guards (vm.timeout.test.ts), TASK_TIMEOUT = 1 ------------------------------------------

LOOPS = {
    "while loop": ("\ndef process_event(event, meta):\n    while True:\n        pass\n", "3:4"),
    "while loop no body": ("\ndef process_event(event, meta):\n    i = 0\n    while True: i += 1\n", "4:4"),
    "do..while loop": ("\ndef process_event(event, meta):\n    while True:\n        if False:\n            break\n", "3:4"),
    "do..while loop in callback": (
        "\ndef process_event(event, meta):\n    def later(x):\n        while True:\n            pass\n    return list(map(later, [event]))\n",
        "4:8",
    ),
    "for loop": ("\nimport itertools\ndef process_event(event, meta):\n    for i in itertools.count():\n        pass\n", "4:4"),
    "for loop no body": ("\nimport itertools\ndef process_event(event, meta):\n    i = 0\n    for j in itertools.count(): i += j\n", "5:4"),
    "for loop in callback": (
        "\nimport itertools\ndef process_event(event, meta):\n    def later(x):\n        for i in itertools.count():\n            pass\n"
        "    return sorted([event], key=later)\n",
        "5:8",
    ),
}


@pytest.mark.parametrize(("source", "position"), list(LOOPS.values()), ids=list(LOOPS))
def test_endless_loops_time_out_with_their_position(pool, source: str, position: str) -> None:  # type: ignore[no-untyped-def]
    """An endless loop in process_event fails after ≥ 1 s with `Script execution timed out after looping for
    1 second on line L:C` (the loop's position in the source as written); the event goes on."""
    install_spec(source)
    started = pool(task_timeout=1.0)
    began = time.monotonic()
    out = started.process_events([spec_event()])
    assert time.monotonic() - began >= 1.0
    assert [e["event"] for e in out] == ["$test"]
    message = PluginConfig.objects.get(id=39).error["message"]
    assert message == f"Script execution timed out after looping for 1 second on line {position}"


WAITS = {
    "small promises": (
        "import time\ndef process_event(event, meta):\n    meta.fetch('{url}/results.json')\n"
        "    for i in range(4):\n        time.sleep(0.8)\n    return event\n"
    ),
    "long promise": "import time\ndef process_event(event, meta):\n    time.sleep(4)\n    return event\n",
}


@pytest.mark.parametrize("source", list(WAITS.values()), ids=list(WAITS))
def test_long_waits_time_out(pool, server, source: str) -> None:  # type: ignore[no-untyped-def]
    """A fetch then four sequential 0.8 s waits, or one 4 s wait, fail after 1–4 s with `Script execution timed
    out after promise waited for 1 second`."""
    install_spec(source.format(url=server[0]))
    started = pool(task_timeout=1.0)
    began = time.monotonic()
    started.process_events([spec_event()])
    assert 1.0 <= time.monotonic() - began < 4.0
    assert PluginConfig.objects.get(id=39).error["message"] == "Script execution timed out after promise waited for 1 second"


# --- Console extension (worker/console.test.ts) -------------------------------------------


def test_console_extension(pool) -> None:  # type: ignore[no-untyped-def]
    """meta.logger.debug/log/info/warn/error with no argument, ("number =", 987), {1: "ein", 2: "zwei"} and
    [99, 79] → entries of type DEBUG/LOG/INFO/WARN/ERROR with "", `number = 987`, `{"1":"ein","2":"zwei"}`,
    `[99,79]`."""
    install_spec(
        "def process_event(event, meta):\n"
        "    for level in ['debug', 'log', 'info', 'warn', 'error']:\n"
        "        write = getattr(meta.logger, level)\n"
        "        write()\n        write('number =', 987)\n        write({1: 'ein', 2: 'zwei'})\n        write([99, 79])\n"
        "    return event\n"
    )
    pool().process_events([spec_event()])
    entries = sorted(PluginLogEntry.objects.filter(plugin_config_id=39, source="CONSOLE").values_list("type", "message"))
    expected = sorted(
        (level, message)
        for level in ("DEBUG", "LOG", "INFO", "WARN", "ERROR")
        for message in ("", "number = 987", '{"1":"ein","2":"zwei"}', "[99,79]")
    )
    assert entries == expected
