"""Error reporting to Sentry (``SENTRY_DSN``), from the main process only.

:func:`init_sentry` is called once by ``run_plugin_server``; with no DSN it
does nothing and every function here is a no-op. What is reported:

- **server errors**: every ERROR log line of the main process with its
  traceback (sentry-sdk's logging integration): the consumer loop,
  ingestion, the scheduler, the job consumer, the meta host and the
  supervised services (a crashed service, tag ``service``). Log ``extra``
  fields that identify a plugin (``team_id``, ``plugin_id``,
  ``plugin_config_id``), a ``service`` or a ``source`` become tags.
- **plugin errors**: :func:`report_plugin_error`, tagged ``team``,
  ``plugin`` and ``plugin_config`` (the main process reports what a worker
  sent back; plugin code runs in sandboxed workers with no SDK and no
  network). At most one report per plugin config and error message every
  ``PLUGIN_ERROR_THROTTLE_SECONDS``: a plugin failing on every event must not
  flood Sentry.
- **staleness restarts** (:mod:`plugin_server.staleness`): the original's message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

TAG_FIELDS = ("team_id", "plugin_id", "plugin_config_id", "service", "source", "mode")
PLUGIN_ERROR_THROTTLE_SECONDS = 60.0
_MAX_THROTTLE_KEYS = 10_000

_enabled = False
_last_reported: dict[tuple[int, str], float] = {}
_throttle_lock = threading.Lock()


def _promote_tags(event: Any, hint: Any) -> Any:
    """``before_send``: identifying log extras become searchable tags."""
    extra = event.get("extra") or {}
    tags = event.setdefault("tags", {})
    for name in TAG_FIELDS:
        value = extra.get(name)
        if value is not None and name not in tags:
            tags[name] = str(value)
    return event


def init_sentry(dsn: str | None, release: str, server_name: str | None = None) -> bool:
    """Start the SDK when ``dsn`` is set; True when reporting is on."""
    global _enabled
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=dsn,
        release=release,
        server_name=server_name,
        integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
        before_send=_promote_tags,
        # Events only: no performance tracing, no request bodies.
        traces_sample_rate=0.0,
        send_default_pii=False,
    )
    _enabled = True
    return True


def enabled() -> bool:
    return _enabled


def capture_exception(error: BaseException, tags: Mapping[str, str | int | None] | None = None) -> None:
    """Report one exception with ``tags`` (no-op without a DSN)."""
    if not _enabled:
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        for key, value in (tags or {}).items():
            if value is not None:
                scope.set_tag(key, str(value))
        sentry_sdk.capture_exception(error)


def capture_message(message: str, level: str = "error", tags: Mapping[str, str] | None = None,
                    extras: Mapping[str, Any] | None = None) -> None:
    """Report one message (no-op without a DSN)."""
    if not _enabled:
        return
    import sentry_sdk

    with sentry_sdk.new_scope() as scope:
        for key, value in (tags or {}).items():
            scope.set_tag(key, value)
        for key, extra in (extras or {}).items():
            scope.set_extra(key, extra)
        sentry_sdk.capture_message(message, level=level)  # type: ignore[arg-type]


def report_plugin_error(team_id: int | None, plugin: str, plugin_id: int, plugin_config_id: int,
                        name: str | None, message: str, stack: str | None) -> bool:
    """Report a plugin's error, throttled per config and message; True when sent."""
    if not _enabled:
        return False
    key = (plugin_config_id, message[:200])
    now = time.monotonic()
    with _throttle_lock:
        if now - _last_reported.get(key, -PLUGIN_ERROR_THROTTLE_SECONDS) < PLUGIN_ERROR_THROTTLE_SECONDS:
            return False
        if len(_last_reported) >= _MAX_THROTTLE_KEYS:
            _last_reported.clear()
        _last_reported[key] = now
    tags = {"team": str(team_id), "plugin": plugin, "plugin_id": str(plugin_id), "plugin_config": str(plugin_config_id)}
    text = f"{name}: {message}" if name else message
    capture_message(text, "error", tags, {"stack": stack} if stack else None)
    return True


def flush(timeout: float = 2.0) -> None:
    """Send what is queued (at shutdown, before a restart)."""
    if not _enabled:
        return
    import sentry_sdk

    sentry_sdk.flush(timeout=timeout)
