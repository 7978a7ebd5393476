"""The three error paths of the server (and the plugin-side errors).

- :class:`RetriableError`: a service is away (database down, broker gone).
  The batch is retried with backoff and nothing is acknowledged.
- :class:`InvalidMessage`: the message can never be processed. It goes to the
  dead-letter store with its reason, is counted, and is acknowledged.
- :class:`PluginError`: a plugin failed. It is recorded on the plugin config
  and in the plugin log, and the event goes on unchanged.
"""

from __future__ import annotations

from typing import Any


class PluginServerError(Exception):
    """Base class of the server's own errors."""


class RetriableError(PluginServerError):
    """A transient failure: retry the same work later, acknowledge nothing."""


class InvalidMessage(PluginServerError):
    """A message that can never be ingested; ``reason`` is a short stable code."""

    def __init__(self, reason: str, message: str, team_id: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.team_id = team_id


class PluginError(PluginServerError):
    """A plugin raised, timed out, or broke the rules of the sandbox."""


class PluginTimeout(PluginError):
    """A plugin call ran past its wall-clock limit."""


class PluginLoadError(PluginError):
    """A plugin's code could not be found, read or compiled."""


class RetryError(PluginError):
    """Raised by a plugin job to ask for another attempt (a global of the plugin sandbox).

    The job queue runs the job again with exponential backoff, up to
    JOB_MAX_ATTEMPTS runs in all (docs/jobs.md). Anywhere else it is an
    error like any other."""


RETRY_FAILURE_PREFIX = "RetryError: "


class WorkerDied(PluginServerError):
    """A worker process died (memory limit, crash) while running a task."""


class PluginsNotRun(PluginServerError):
    """Some events' plugins could not run: their team's worker was lost, and lost again on a fresh one.

    ``processed`` holds the result for every other event (as ``process_events``
    would have returned it); ``failed`` the events whose plugins did not run,
    each with the reason, for the dead-letter store: such an event is never
    stored as if its plugins (a filter, a PII scrubber) had run.
    """

    def __init__(self, processed: list[Any], failed: list[tuple[Any, str]]) -> None:
        super().__init__(f"the plugins of {len(failed)} events could not run")
        self.processed = processed
        self.failed = failed


class MetaCallError(PluginError):
    """A plugin's meta call (cache, storage, fetch, ...) was refused or failed.

    The message is meant for the plugin author: the worker re-raises it inside
    the plugin, where it can be caught like any other exception."""
