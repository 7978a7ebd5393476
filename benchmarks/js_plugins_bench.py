"""Benchmark: events/s through a trivial JavaScript process_event plugin against the same plugin in Python.

Usage (from the repository root; needs no database):

    .venv/bin/python benchmarks/js_plugins_bench.py [--events N]

One team, one plugin config, batches of 100 through ``WorkerPool.process_events``
(the whole path: routing, the team worker, the plain-data boundary). The
JavaScript plugin runs in a V8 isolate of that worker (transpiled by Babel
first, like a loaded plugin); the figures are recorded in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from plugins_bench import django, make_event, start_pool  # noqa: E402

PYTHON = "def process_event(event, meta):\n    event['properties']['seen'] = True\n    return event\n"
JS_SYNC = "export function processEvent(event) {\n    event.properties.seen = true\n    return event\n}\n"
JS_ASYNC = "export async function processEvent(event) {\n    event.properties.seen = true\n    return event\n}\n"
TS_META = (
    "import { PluginEvent, PluginMeta } from '@posthog/plugin-scaffold'\n"
    "export function processEvent(event: PluginEvent, { global }: PluginMeta) {\n"
    "    event.properties = { ...event.properties, seen: true, count: (global.count = (global.count || 0) + 1) }\n"
    "    return event\n}\n"
)


def code_of(source: str, main: str) -> Any:
    from plugin_server.plugins.code import PluginCode
    from plugin_server.plugins.js.transpile import is_javascript, transpile

    def make(config_id: int) -> PluginCode:
        base = {"plugin_id": config_id, "name": "bench", "digest": "bench", "main_filename": main, "source": source,
                "plugin_json": {}, "config_schema": {}}
        if not is_javascript(main):
            return PluginCode(**base)
        transpiled = transpile(source, main)
        return PluginCode(**base, language="javascript", script=transpiled.script, js_token=transpiled.token)

    return make


def bench(name: str, source: str, main: str, events: int) -> None:
    began = time.perf_counter()
    pool = start_pool(1, 1, code_of=code_of(source, main))
    try:
        pool.process_events([make_event(1, 0)])  # worker forked, isolate made, plugin set up
        ready = time.perf_counter() - began
        batches = [[make_event(1, n) for n in range(start, start + 100)] for start in range(0, events, 100)]
        started = time.perf_counter()
        for batch in batches:
            out = pool.process_events(batch)
            assert out[-1]["properties"]["seen"] is True, out[-1]
        elapsed = time.perf_counter() - started
        print(f"  {name:<40} {events / elapsed:>9,.0f} events/s   (first event incl. load: {ready * 1000:,.0f} ms)")
    finally:
        pool.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    options = parser.parse_args()
    django.setup()
    print(f"WorkerPool.process_events, 1 team, 1 lane, batches of 100, {options.events:,} events:")
    bench("Python process_event (sandboxed)", PYTHON, "main.py", options.events)
    bench("JavaScript processEvent (sync)", JS_SYNC, "index.js", options.events)
    bench("JavaScript processEvent (async)", JS_ASYNC, "index.js", options.events)
    bench("TypeScript processEvent using meta.global", TS_META, "index.ts", options.events)


if __name__ == "__main__":
    main()
