"""JavaScript and TypeScript plugins in real team workers: V8 isolates through the same pool, meta host and limits."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from plugin_server.exceptions import RetryError
from plugin_server.models import PluginConfig, PluginLogEntry, PluginStorage
from tests.factories import create_team
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def install_js(source: str, filename: str = "index.ts", **fields: Any) -> PluginConfig:
    """A source plugin whose main file is ``filename`` (TypeScript by default)."""
    return install(json.dumps({filename: source, "plugin.json": json.dumps({"main": filename})}), **fields)


def logs(config: PluginConfig) -> list[tuple[str, str, str]]:
    return [(entry.source, entry.type, entry.message)
            for entry in PluginLogEntry.objects.filter(plugin_config_id=config.id).order_by("timestamp")]


def error_of(config: PluginConfig) -> dict[str, Any]:
    config.refresh_from_db()
    return config.error or {}


TS_HELLO = """import { Plugin, PluginEvent, PluginMeta } from '@posthog/plugin-scaffold'

type Meta = PluginMeta<{ config: { greeting: string } }>

export async function setupPlugin({ global, config }: Meta) {
    global.greeting = config.greeting || 'hello'
}

export function processEvent(event: PluginEvent, { global }: Meta): PluginEvent {
    event.properties = { ...event.properties, greeting: global.greeting as string }
    console.log('processed', event.event, { n: event.properties.n })
    return event
}
"""


BATCH = """module.exports = {
    processEventBatch: async (events) => events
        .filter((e) => e.properties.n % 2 === 0)
        .map((e) => ({ ...e, properties: { ...e.properties, batched: true } })),
}
"""
TASKS = """export async function runEveryMinute({ storage }) { await storage.set('ran', 'yes') }
export const jobs = {
    hello: async (payload, { storage }) => { await storage.set('job', payload.text) },
    again: async () => { throw new RetryError('try later') },
}
"""


def test_typescript_plugin_with_a_type_only_import_processes_events(make_pool):
    """A TS plugin importing types from @posthog/plugin-scaffold runs setupPlugin and processEvent; console goes to its log."""
    config = install_js(TS_HELLO, config={"greeting": "hoi"})
    pool = make_pool()
    out = pool.process_events([event(config.team_id, n=1), event(config.team_id, n=2)])
    assert [item["properties"]["greeting"] for item in out] == ["hoi", "hoi"]
    assert out[0]["properties"]["$plugins_succeeded"] == [f"{config.plugin.name} ({config.id})"]
    assert ("CONSOLE", "LOG", 'processed e1 {"n":1}') in logs(config)


def test_batch_plugin_in_commonjs(make_pool):
    """module.exports = {processEventBatch}: the batch hook runs, and processEvent is derived from it."""
    config = install_js(BATCH, filename="index.js")
    pool = make_pool()
    out = pool.process_events([event(config.team_id, n=1), event(config.team_id, n=2)])
    assert [(item["event"], item["properties"]["batched"]) for item in out] == [("e2", True)]


def test_exports_found_as_globals_and_errors_in_the_plugins_own_lines(make_pool):
    """A plain top-level function is found; an error names the plugin's file and line, the event goes on."""
    config = install_js(
        "// a comment\n"
        "function processEvent(event) {\n"
        "    if (event.properties.n === 1) {\n"
        "        return event.properties.missing.boom\n"
        "    }\n"
        "    event.properties.ok = true\n"
        "    return event\n"
        "}\n",
        filename="index.js",
    )
    pool = make_pool()
    first, second = pool.process_events([event(config.team_id, n=1), event(config.team_id, n=2)])
    assert first["properties"]["$plugins_failed"] == [f"{config.plugin.name} ({config.id})"]
    assert second["properties"]["ok"] is True
    error = error_of(config)
    assert error["name"] == "TypeError" and "boom" in error["message"]
    assert "index.js:4:" in error["stack"]


def test_unsupported_module_fails_to_load_naming_it_and_ingestion_goes_on(make_pool):
    """require('aws-sdk') is a load error naming the module, recorded on its config; other plugins and events go on."""
    team = create_team()
    broken = install_js("const AWS = require('aws-sdk')\nexports.processEvent = (e) => e\n", filename="index.js", team=team)
    fine = install_js("export const processEvent = (e) => ({ ...e, event: 'fine' })\n", filename="index.js", team=team, order=1)
    pool = make_pool()
    (out,) = pool.process_events([event(team.id)])
    assert out["event"] == "fine"
    assert "Cannot import 'aws-sdk'! This package is not provided by PostHog in plugins." in error_of(broken)["message"]
    assert fine.id


def test_endless_loop_after_an_await_times_out_with_the_loop_message(make_pool):
    """A loop that starts after an await is stopped at the time limit with the original's message and its line."""
    config = install_js(
        "export async function processEvent(event, { cache }) {\n"
        "    await Promise.resolve(1)\n"
        "    let i = 0\n"
        "    while (true) { i++ }\n"
        "}\n"
    )
    pool = make_pool(task_timeout=1.0)
    started = time.monotonic()
    (out,) = pool.process_events([event(config.team_id)])
    assert 0.8 <= time.monotonic() - started < 10
    assert out["properties"]["$plugins_failed"] == [f"{config.plugin.name} ({config.id})"]
    assert error_of(config)["message"] == "Script execution timed out after looping for 1 second on line 4:4"


def test_waiting_forever_times_out_with_the_promise_message(make_pool):
    """A call awaiting a timer longer than the limit fails with the promise message; the next event runs."""
    config = install_js(
        "export async function processEvent(event) {\n"
        "    if (event.properties.n === 1) await new Promise((resolve) => setTimeout(resolve, 4000))\n"
        "    return { ...event, event: 'done' }\n"
        "}\n"
    )
    pool = make_pool(task_timeout=1.0)
    first, second = pool.process_events([event(config.team_id, n=1), event(config.team_id, n=2)])
    assert "Script execution timed out after promise waited for 1 second" in error_of(config)["message"]
    assert first["properties"]["$plugins_failed"] and second["event"] == "done"


def test_short_timers_run(make_pool):
    """setTimeout within the limit resolves (the worker fires due timers)."""
    config = install_js(
        "export async function processEvent(event) {\n"
        "    await new Promise((resolve) => setTimeout(resolve, 50))\n"
        "    return { ...event, event: 'waited' }\n"
        "}\n"
    )
    (out,) = make_pool().process_events([event(config.team_id)])
    assert out["event"] == "waited"


def test_memory_bomb_is_stopped_and_blamed_on_its_config(make_pool):
    """A plugin filling its isolate's heap fails with the memory message; the worker is replaced and the next events run."""
    team = create_team()
    bomb = install_js(
        "export function processEvent(event) {\n"
        "    if (event.properties.n === 1) { const hog = []; for (;;) hog.push(new Array(100000).fill(event)) }\n"
        "    return { ...event, event: 'survived' }\n"
        "}\n",
        team=team,
    )
    pool = make_pool(js_memory_mb=64, task_timeout=20.0)
    (first,) = pool.process_events([event(team.id, n=1)])
    assert first["properties"]["$plugins_failed"] == [f"{bomb.plugin.name} ({bomb.id})"]
    assert "memory" in error_of(bomb)["message"]
    (second,) = pool.process_events([event(team.id, n=2)])
    assert second["event"] == "survived"


def test_webassembly_and_shared_memory_are_gone(make_pool):
    """WebAssembly and SharedArrayBuffer are not among the globals."""
    config = install_js(
        "export const processEvent = (e) => ({ ...e, properties: { wasm: typeof WebAssembly, sab: typeof SharedArrayBuffer,"
        " req: typeof require, buf: Buffer.from('aGk=', 'base64').toString(),"
        " md5: require('crypto').createHash('md5').update('a').digest('hex') } })\n"
    )
    (out,) = make_pool().process_events([event(config.team_id)])
    assert out["properties"]["wasm"] == "undefined" and out["properties"]["sab"] == "undefined"
    assert (out["properties"]["req"], out["properties"]["buf"]) == ("function", "hi")
    assert out["properties"]["md5"] == "0cc175b9c0f1b6a831c399e269772661"


def test_reload_disposes_the_isolate_and_sets_up_again(make_pool):
    """A changed config gets a new isolate: teardownPlugin runs, meta.global starts empty again."""
    config = install_js(
        "export function setupPlugin({ global }) { global.count = 0 }\n"
        "export function teardownPlugin() { console.log('bye') }\n"
        "export function processEvent(e, { global, config }) { global.count++; return { ...e, properties: { count: global.count, v: config.v } } }\n",
        config={"v": 1},
    )
    pool = make_pool()
    assert pool.process_events([event(config.team_id)])[0]["properties"]["count"] == 1
    assert pool.process_events([event(config.team_id)])[0]["properties"]["count"] == 2
    config.config = {"v": 2}
    config.save()
    pool.reload()
    out = pool.process_events([event(config.team_id)])[0]["properties"]
    assert (out["count"], out["v"]) == (1, 2)
    assert ("CONSOLE", "LOG", "bye") in logs(config)


def test_scheduled_task_and_job(make_pool):
    """runEveryMinute is listed and runs; a job handler runs with its payload; RetryError is a retry failure."""
    config = install_js(TASKS)
    pool = make_pool()
    schedule = pool.scheduled_tasks()
    assert config.id in schedule["runEveryMinute"]
    pool.run_scheduled(config.id, "runEveryMinute")
    pool.run_job(config.id, "hello", {"text": "hi"})
    assert PluginStorage.objects.get(plugin_config_id=config.id, key="ran").value == '"yes"'
    assert PluginStorage.objects.get(plugin_config_id=config.id, key="job").value == '"hi"'
    with pytest.raises(RetryError, match="try later"):
        pool.run_job(config.id, "again", {})


def test_jobs_have_the_longer_task_limit(make_pool):
    """A job may run past TASK_TIMEOUT (tasks get 4x), as Python plugins' jobs do; a hook may not."""
    config = install_js(
        "export const jobs = { slow: async (payload, { storage }) => {\n"
        "    await new Promise((resolve) => setTimeout(resolve, 1500))\n"
        "    await storage.set('slow', 'done')\n"
        "} }\n"
    )
    pool = make_pool(task_timeout=1.0)
    pool.run_job(config.id, "slow", {})
    assert PluginStorage.objects.get(plugin_config_id=config.id, key="slow").value == '"done"'


def test_on_event_and_on_snapshot_also_concurrently_on_the_export_lane(make_pool):
    """onEvent / onSnapshot run for stored events; the export lane may run several calls of one isolate at once."""
    config = install_js(
        "export async function onEvent(event, { storage }) {\n"
        "    await storage.set(`seen-${event.properties.n}`, event.event)\n"
        "}\n"
        "export async function onSnapshot(event, { cache }) { await cache.set('snap', event.event) }\n"
    )
    pool = make_pool()
    pool.on_events([event(config.team_id, n=1), {**event(config.team_id, n=2), "event": "$snapshot"}])
    assert PluginStorage.objects.get(plugin_config_id=config.id, key="seen-1").value == '"e1"'
    assert not PluginStorage.objects.filter(plugin_config_id=config.id, key="seen-2").exists()
    counts = pool.export(config.id, [event(config.team_id, n=n) for n in range(10, 30)], 4)
    assert counts["timeouts"] == 0
    assert PluginStorage.objects.filter(plugin_config_id=config.id, key__startswith="seen-").count() == 21


def _zip(files: dict[str, str]) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def test_archive_plugin_and_a_broken_index_js(make_pool):
    """A zip with testplugin/index.js runs; a syntax error is recorded with the parser's message, the chain goes on."""
    plugin_json = json.dumps({"name": "test-maxmind-plugin", "main": "index.js"})
    team = create_team()
    good = install("", team=team, plugin_fields={"plugin_type": "custom", "archive": _zip({
        "testplugin/index.js": "async function processEvent(event) { event.team_id = event.properties.n === 1 ? 400 : event.team_id;"
                               " event.event = 'archived'; return event }",
        "testplugin/plugin.json": plugin_json})})
    broken = install("", team=team, order=1, plugin_fields={"plugin_type": "custom", "archive": _zip({
        "testplugin/index.js": "function processEvent(event) { return {a: 1 b: 2} }",
        "testplugin/plugin.json": plugin_json})})
    pool = make_pool()
    out = pool.process_events([event(team.id, n=1), event(team.id, n=2)])
    assert [item["event"] for item in out] == ["archived"]  # the first changed its team: not ingested
    assert error_of(good)["message"] == "Illegal Operation: Plugin tried to change teamID"
    assert 'Unexpected token, expected ","' in error_of(broken)["message"]
