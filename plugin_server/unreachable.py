"""One clear line, not a traceback, when Postgres or Redis cannot be reached.

A command that cannot connect fails deep inside the database driver or
redis-py, with a traceback that hides the one fact that matters: which
address was tried and what it answered. ``manage.py`` asks
:func:`unreachable_service` about any error a command raises; for a failed
connection it gets back a line such as::

    Cannot reach the database postgres://postgres@127.0.0.1:5999/posthog: connection to server at
    "127.0.0.1", port 5999 failed: Connection refused (is it running? bin/services up starts one)

(one line when printed).

Credentials in the URL are masked. Any other error is not ours to shorten.
"""

from __future__ import annotations

import redis
from django.db import OperationalError

from plugin_server.config import get_config, mask_url

HINT = "is it running? bin/services up starts one"


def _first_line(error: BaseException) -> str:
    """The driver's first line, plus the hint when nothing answered at that address."""
    text = str(error).strip().splitlines()
    line = text[0].removeprefix("connection failed: ").strip() if text else type(error).__name__
    nothing_there = any(word in line.lower() for word in ("refused", "timed out", "timeout", "no such file"))
    return f"{line} ({HINT})" if nothing_there else line


def unreachable_service(error: BaseException) -> str | None:
    """The line to print for a failed connection to Postgres or Redis; None for any other error."""
    if isinstance(error, OperationalError) and "connect" in str(error).lower():
        return f"Cannot reach the database {mask_url(get_config().database_url)}: {_first_line(error)}"
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return f"Cannot reach Redis at {mask_url(get_config().redis_url)}: {_first_line(error)}"
    return None
