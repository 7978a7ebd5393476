"""Transpiling a JavaScript/TypeScript plugin once, when it is loaded (main process).

The transpiler is @babel/standalone (vendored from the npm registry into
``vendor/js`` by ``bin/env.sh``'s ``ensure_js_vendor``), run inside a V8
isolate of the trusted main process: no network, no Node.js at run time.
Plugin source is only parsed here, never run. ``transpile.js`` does the work:
TypeScript types dropped, ES modules turned into CommonJS, lines kept in
place (V8's stack lines are the plugin's own), a deadline check as the first
statement of every ``while``, ``do…while`` and ``for(;;)`` loop, and the list
of modules the plugin imports — one that the runtime does not provide is a
load error naming it, recorded on the plugin's configs.

Results are cached by a hash of the file name and source.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugin_server.exceptions import PluginLoadError

JS_EXTENSIONS = (".js", ".ts", ".mjs", ".cjs", ".tsx", ".jsx")
# Modules the worker's ``require`` serves (plugin_server/plugins/js/prelude.js).
PROVIDED_MODULES = frozenset({"@posthog/plugin-scaffold", "@posthog/plugin-contrib", "node-fetch", "crypto", "url", "buffer"})
_HERE = Path(__file__).resolve().parent
BABEL = _HERE.parents[2] / "vendor" / "js" / "node_modules" / "@babel" / "standalone" / "babel.min.js"
CACHE_SIZE = 256


def is_javascript(main_filename: str) -> bool:
    return main_filename.lower().endswith(JS_EXTENSIONS)


@dataclass(frozen=True, slots=True)
class Transpiled:
    """A plugin's script, ready for an isolate; ``token`` names its loop guard."""

    script: str
    token: str


class _Transpiler:
    """One isolate holding Babel, made on first use; one transpile at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._context: Any = None
        self._pid = 0

    def run(self, source: str, filename: str, guard: str) -> dict[str, Any]:
        from py_mini_racer import MiniRacer

        with self._lock:
            if self._context is None or self._pid != os.getpid():
                # A forked child has the object but not the isolate's thread: it makes its own.
                if not BABEL.is_file():
                    raise PluginLoadError(
                        f"The JavaScript transpiler is not installed ({BABEL}): run bin/env.sh's ensure_js_vendor (bin/test does)"
                    )
                context = MiniRacer()
                context.eval(BABEL.read_text(encoding="utf-8"))
                context.eval((_HERE / "transpile.js").read_text(encoding="utf-8"))
                self._context = context
                self._pid = os.getpid()
            answer = self._context.call("transpilePlugin", source, filename, guard, timeout_sec=60)
        parsed: dict[str, Any] = json.loads(answer)
        return parsed


_TRANSPILER = _Transpiler()


@functools.lru_cache(maxsize=CACHE_SIZE)
def _transpile_cached(source_hash: str, source: str, filename: str) -> Transpiled:
    token = source_hash[:16]
    try:
        result = _TRANSPILER.run(source, filename, f"__guard_{token}")
    except PluginLoadError:
        raise
    except Exception as error:  # noqa: BLE001 — Babel's syntax errors carry the line and a code frame
        raise PluginLoadError(f"Could not transpile {filename}: {error}") from None
    missing = sorted(name for name in result["required"] if name not in PROVIDED_MODULES)
    if missing:
        raise PluginLoadError(f"Cannot import '{missing[0]}'! This package is not provided by PostHog in plugins.")
    return Transpiled(script=str(result["code"]), token=token)


def transpile(source: str, filename: str) -> Transpiled:
    """The plugin's script (cached by source hash); :class:`PluginLoadError` on a syntax error or an unprovided import."""
    source_hash = hashlib.sha256(f"{filename}\0{source}".encode()).hexdigest()
    return _transpile_cached(source_hash, source, filename)
