"""How ``print`` and ``meta.logger`` arguments become one log line.

Free of Django imports, so a worker may format arguments that cannot cross
the pipe (an exception object, an instance of a plugin's class) before
sending them. The rules are the original console's:
arguments joined by single spaces, a dict or list as compact JSON, an error
as ``Name: message``. Arguments go through the plain-data boundary
(:func:`plugin_server.plugins.plain.log_text`): a plugin's object shows as
``<Name object>``, never through a method of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from plugin_server.plugins.plain import log_text

# A log line longer than this is cut: one chatty plugin must not fill the
# log table or the writer's buffer.
MAX_MESSAGE_CHARS = 8_192
TRUNCATED_SUFFIX = "… (truncated)"


def format_log_argument(value: object) -> str:
    """One argument as the original console printed it, without running any method a plugin could define."""
    return log_text(value)


def cap_message(message: str) -> str:
    """``message`` cut at :data:`MAX_MESSAGE_CHARS`, saying so."""
    if len(message) > MAX_MESSAGE_CHARS:
        return message[: MAX_MESSAGE_CHARS - len(TRUNCATED_SUFFIX)] + TRUNCATED_SUFFIX
    return message


def format_log_message(args: Sequence[object]) -> str:
    """All arguments as one line, cut at :data:`MAX_MESSAGE_CHARS`."""
    return cap_message(" ".join(format_log_argument(value) for value in args))
