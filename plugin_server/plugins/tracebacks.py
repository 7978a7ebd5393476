"""Tracebacks a plugin author can read: the plugin's own frames, its own file name.

A plugin's error travels from the worker to ``posthog_pluginconfig.error``
(``stack``, shown in the admin), to the PLUGIN/ERROR log entry and to
``run_plugin``'s output. A raw Python traceback would show the server's
frames (the worker loop, the time limit, the sandbox's guards) and paths of
the machine, and name the plugin's file by its internal compiled name
(``plugin-<id>/main.py``). :func:`plugin_traceback` keeps only the frames of
the plugin's code, names them by the plugin's file (``main.py``) with the
source line, and ends with the line that says what went wrong:

.. code-block:: text

    Traceback (most recent call last):
      File "main.py", line 6, in process_event
        helper(event)
      File "main.py", line 2, in helper
        return event["properties"]["missing"]
    KeyError: 'missing'

An exception the server raised on the plugin's behalf with no frame of the
plugin (a wrapper such as "the module body failed") gives way to its cause,
so that the last line is the real cause. A syntax error names the plugin's
file, line and column, with a caret under the column.

Runs in the worker: imports nothing from Django and nothing from the
server's other modules, so it cannot pull anything into the sandbox.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plugin_server.plugins.code import PluginCode
# The longest chain of causes shown (a cycle or a very long chain stops here).
MAX_CHAIN = 10


def _plugin_frames(error: BaseException, compiled_filename: str, display_filename: str, lines: list[str]) -> list[traceback.FrameSummary]:
    frames = []
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename != compiled_filename:
            continue
        lineno = frame.lineno or 0
        text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        frames.append(traceback.FrameSummary(display_filename, lineno, frame.name, lookup_line=False, line=text))
    return frames


def _last_line(error: BaseException, compiled_filename: str, display_filename: str) -> list[str]:
    """What ``traceback`` prints for the exception itself, with the plugin's file name."""
    if isinstance(error, SyntaxError) and error.filename in (compiled_filename, display_filename, None):
        shown = SyntaxError(
            error.msg, (display_filename, error.lineno, error.offset, error.text, error.end_lineno, error.end_offset)
        )
        return [line.replace(compiled_filename, display_filename) for line in traceback.format_exception_only(shown)]
    # The class's own name, never its module: "PluginTimeout: ...", not
    # "plugin_server.exceptions.PluginTimeout: ..." (nor a plugin's internal module name).
    text = str(error).replace(compiled_filename, display_filename)
    name = type(error).__qualname__
    return [f"{name}: {text}\n" if text else f"{name}\n"]


def _chain(error: BaseException) -> list[tuple[BaseException, str]]:
    """The exception and its causes, innermost first; each with the sentence that leads from it to the next one."""
    outermost_first: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = error
    sentence = ""
    while current is not None and id(current) not in seen and len(outermost_first) < MAX_CHAIN:
        seen.add(id(current))
        outermost_first.append((current, sentence))
        if current.__cause__ is not None:
            current, sentence = current.__cause__, "The above exception was the direct cause of the following exception:"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, sentence = current.__context__, "During handling of the above exception, another exception occurred:"
        else:
            current = None
    return outermost_first[::-1]


def plugin_traceback(error: BaseException, compiled_filename: str, display_filename: str, source: str) -> str:
    """The traceback of ``error`` as the plugin's author should see it.

    ``compiled_filename`` is the file name the plugin's code was compiled
    under; ``display_filename`` the name to show (the plugin's own,
    ``main.py``); ``source`` the plugin's source text, for the lines shown.
    """
    lines = source.splitlines()
    parts: list[str] = []
    sentence = ""
    for position, (exception, leads_on) in enumerate(_chain(error)):
        frames = _plugin_frames(exception, compiled_filename, display_filename, lines)
        if position > 0 and not frames:
            # Raised by the server around the plugin's error, with no frame of
            # the plugin: the cause already told the story, and stays last.
            continue
        if sentence:
            parts.append(f"\n{sentence}\n\n")
        if frames:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.StackSummary.from_list(frames).format())
        parts.extend(_last_line(exception, compiled_filename, display_filename))
        sentence = leads_on
    return "".join(parts).rstrip("\n")


def code_traceback(error: BaseException, code: PluginCode) -> str:
    """:func:`plugin_traceback` for an error of the plugin whose code is ``code``."""
    from plugin_server.plugins.sandbox import plugin_filename

    return plugin_traceback(error, plugin_filename(code), code.main_filename, code.source)
