"""Running a team's plugins on events and tasks, inside a worker.

The ``process_event`` chain runs each plugin of the
team in plugin order on the result of the previous one; a falsy result
drops the event; a changed ``team_id`` drops it with an error; an exception
(or a timeout) is recorded for that plugin config and the event goes on as
it was handed to that plugin. ``$plugins_succeeded`` / ``$plugins_failed``
are set when at least one plugin ran. ``on_event`` / ``on_snapshot`` and the
scheduled tasks and jobs are here too.

Runs in the worker: imports nothing from Django.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from plugin_server.exceptions import RetryError
from plugin_server.plugins.lifecycle import DISCARD, Instances, PluginInstance, Runtime
from plugin_server.plugins.plain import restore, snapshot

TEAM_CHANGED = "Illegal Operation: Plugin tried to change teamID"
NOT_AN_EVENT = "process_event must return the event (a dict) or None to drop it, not {kind}"


def _chain(instances: Instances, config_ids: Iterable[int], item: int) -> list[PluginInstance]:
    chain = []
    for config_id in config_ids:
        instance = instances.get(config_id, item)
        if instance is not None:
            chain.append(instance)
    return chain


def run_process_event(
    runtime: Runtime,
    instances: Instances,
    config_ids: Iterable[int],
    event: dict[str, Any],
    item: int,
    skip: frozenset[int] = frozenset(),
) -> dict[str, Any] | None:
    """The original's processEvent chain for one event; None when dropped.

    ``skip`` holds configs to count as failed without calling them: the ones
    whose call took a worker down on a previous attempt of this event.
    """
    team_id = event.get("team_id")
    succeeded: list[str] = []
    failed: list[str] = []
    ran = False
    current = event
    for instance in _chain(instances, config_ids, item):
        process = instance.process_event_fn()
        if process is None:
            continue
        ran = True
        if instance.spec.plugin_config_id in skip:
            failed.append(instance.spec.label)
            continue
        # If the plugin fails, the event goes on as it was handed over, whatever the plugin did to it meanwhile.
        before = snapshot(current)
        try:
            result = runtime.call(instance.spec, process, (current, instance.meta), runtime.task_timeout, item, "process_event")
        except Exception as error:
            current = restore(before)
            runtime.error(instance.spec, error, current)
            failed.append(instance.spec.label)
            continue
        if not result:
            runtime.drop_events(instance.spec, "process_event")
            return None
        if not isinstance(result, dict):
            runtime.error(instance.spec, NOT_AN_EVENT.format(kind=type(result).__name__), current)
            failed.append(instance.spec.label)
            continue
        if result.get("team_id") != team_id:
            runtime.error(instance.spec, TEAM_CHANGED, None)
            runtime.drop_events(instance.spec, "process_event")
            return None
        succeeded.append(instance.spec.label)
        current = result
    if ran:
        # The markers go on the original input object; plugins
        # usually return that same object, so the result shows them too.
        for target in (event, current) if current is not event else (event,):
            properties = target.get("properties")
            if properties is None:
                properties = target["properties"] = {}
            # Properties that are not a dict are the ingester's to reject; never overwritten here.
            if isinstance(properties, dict):
                properties["$plugins_succeeded"] = succeeded
                properties["$plugins_failed"] = failed
    return current


def run_process_event_batch(
    runtime: Runtime, instances: Instances, config_ids: Iterable[int], events: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One team's events through each plugin's batch function in turn."""
    batch = events
    succeeded: list[str] = []
    failed: list[str] = []
    ran = False
    for instance in _chain(instances, config_ids, 0):
        function = instance.process_event_batch_fn()
        if function is None or not batch:
            continue
        ran = True
        before = snapshot(batch)
        try:
            result = runtime.call(instance.spec, function, (batch, instance.meta), runtime.task_timeout, 0, "process_event_batch")
        except Exception as error:
            batch = restore(before)
            runtime.error(instance.spec, error, batch[0])
            failed.append(instance.spec.label)
            continue
        kept = [item for item in result if item] if isinstance(result, list) else []
        if len(kept) < len(batch):
            runtime.drop_events(instance.spec, "process_event_batch", len(batch) - len(kept))
        batch = kept
        succeeded.append(instance.spec.label)
    if ran:
        for event in batch:
            if isinstance(event, dict):
                properties = event.setdefault("properties", {})
                if isinstance(properties, dict):
                    properties["$plugins_succeeded"] = list(succeeded)
                    properties["$plugins_failed"] = list(failed)
    return [event for event in batch if isinstance(event, dict)]


def run_on_event(
    runtime: Runtime, instances: Instances, config_ids: Iterable[int], event: dict[str, Any], item: int
) -> None:
    """``on_event`` (or ``on_snapshot`` for ``$snapshot``) of every plugin of the team."""
    name = "on_snapshot" if event.get("event") == "$snapshot" else "on_event"
    for instance in _chain(instances, config_ids, item):
        function = instance.method(name)
        if function is None:
            continue
        try:
            runtime.call(instance.spec, function, (event, instance.meta), runtime.task_timeout, item, name, DISCARD)
        except Exception as error:
            runtime.error(instance.spec, error, event)


class TaskNotFound(LookupError):
    """The config has no such scheduled task or job."""


def run_task(runtime: Runtime, instance: PluginInstance, kind: str, name: str, payload: Any, limit: float) -> Any:
    """Run a scheduled task (``kind="schedule"``) or a job; errors are recorded and swallowed."""
    if kind == "schedule":
        function = instance.method(name)
        args: tuple[Any, ...] = (instance.meta,)
    else:
        function = instance.job(name)
        args = (payload, instance.meta)
    if not callable(function):
        raise TaskNotFound(f'Task "{name}" not found for plugin "{instance.spec.plugin_name}"')
    try:
        return runtime.call(instance.spec, function, args, limit, -1, f"task.{kind}.{name}")
    except MemoryError:
        raise
    except RetryError as error:
        if kind != "job":
            runtime.error(instance.spec, error, None)
            return None
        # Not an error yet: the job queue decides between a retry and the final failure.
        raise RetryError(str(error)) from None
    except Exception as error:
        runtime.error(instance.spec, error, None)
        return None
