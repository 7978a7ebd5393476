"""The one place the plugin server gets PostHog's models from.

On its own the server uses the stand-ins of the app ``posthog_standin``
(same tables and columns as PostHog). Inside PostHog's monolith leave
``posthog_standin`` out of ``INSTALLED_APPS``: the models then come from
``posthog.models`` (``POSTHOG_MODELS_MODULE`` names another package). Every other module imports models from here
only, so nothing else needs to know which set it got.

Each model is taken from the module where PostHog defines it
(``posthog.models.plugin`` for ``PluginStorage``, ``posthog.models.person``
for ``Person``, ...), never from the package's ``__init__``, which has
never exported all of them. The stand-ins are one module: a configured
package without such a submodule is looked up itself.

A model the configured PostHog does not have, or has as something else than
a Django model (today's PostHog keeps session recordings and plugin log
entries in ClickHouse only), is ``None`` here and named by :func:`missing_models`;
the server then uses the Kafka path for it (see :mod:`plugin_server.checks`).
The server's own tables are defined at the bottom.
"""

from __future__ import annotations

import importlib
import uuid
from types import ModuleType
from typing import TYPE_CHECKING, Any

from django.apps import apps
from django.contrib.postgres.fields import ArrayField
from django.db import models

from plugin_server.app_settings import app_setting

STANDIN_MODELS_MODULE = "posthog_standin.models"

# Model name -> the submodules of the models package that may define it,
# in PostHog's layout of May 2021 and of today (the first that has it wins).
MODEL_MODULES: dict[str, tuple[str, ...]] = {
    "Organization": ("organization",),
    "OrganizationMembership": ("organization",),
    "User": ("user",),
    "Team": ("team", "team.team"),
    "Person": ("person", "person.person"),
    "PersonDistinctId": ("person", "person.person"),
    "Cohort": ("cohort", "cohort.cohort"),
    "CohortPeople": ("cohort", "cohort.cohort"),
    "Element": ("element", "element.element"),
    "ElementGroup": ("element_group",),
    "Event": ("event", "event.event"),
    "SessionRecordingEvent": ("session_recording_event",),
    "EventDefinition": ("event_definition",),
    "PropertyDefinition": ("property_definition",),
    "Plugin": ("plugin",),
    "PluginConfig": ("plugin",),
    "PluginAttachment": ("plugin",),
    "PluginStorage": ("plugin",),
    "PluginLogEntry": ("plugin",),
}

# Models the server cannot run without, whatever the PostHog.
REQUIRED_MODELS = frozenset(
    {"Organization", "Team", "Person", "PersonDistinctId", "Plugin", "PluginConfig", "PluginAttachment", "PluginStorage"}
)


def _import_if_present(name: str) -> ModuleType | None:
    """The module ``name``, or None when it (or a parent package) does not exist.

    An import error raised *inside* an existing module is not swallowed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and (name == error.name or name.startswith(error.name + ".")):
            return None
        raise


def resolve_model(package: str, name: str) -> type[models.Model] | None:
    """The Django model ``name`` from the module of ``package`` that defines it, or None."""
    modules = [_import_if_present(f"{package}.{submodule}") for submodule in MODEL_MODULES[name]]
    # A single module (the stand-ins) holds every model itself.
    modules.append(importlib.import_module(package))
    for module in modules:
        found = getattr(module, name, None) if module is not None else None
        if found is not None:
            return found if isinstance(found, type) and issubclass(found, models.Model) else None
    return None


def models_package() -> str:
    """The configured models package (``POSTHOG_MODELS_MODULE``; unset: the
    stand-ins where their app is installed, else PostHog's ``posthog.models``)."""
    configured = app_setting("POSTHOG_MODELS_MODULE")
    if configured:
        return str(configured)
    return STANDIN_MODELS_MODULE if apps.is_installed("posthog_standin") else "posthog.models"


_resolved: dict[str, Any] = {name: resolve_model(models_package(), name) for name in MODEL_MODULES}


def missing_models() -> frozenset[str]:
    """Names of the models the configured PostHog does not have as Django models."""
    return frozenset(name for name, model in _resolved.items() if model is None)


def has_model(name: str) -> bool:
    """Whether the configured PostHog has the model ``name`` as a Django model."""
    return _resolved.get(name) is not None


def persons_db_alias(write: bool = True) -> str:
    """The database of the person tables: the host's router decides (today's
    PostHog keeps persons in a database of their own), else ``default``."""
    from django.db import DEFAULT_DB_ALIAS, router

    model = _resolved["Person"]
    alias = router.db_for_write(model) if write else router.db_for_read(model)
    return alias or DEFAULT_DB_ALIAS


if TYPE_CHECKING:
    # The type checker sees the stand-ins (same fields as PostHog's models);
    # "X as X" re-exports them under strict.
    from posthog_standin.models import (
        Cohort as Cohort,
        CohortPeople as CohortPeople,
        Element as Element,
        ElementGroup as ElementGroup,
        Event as Event,
        EventDefinition as EventDefinition,
        Organization as Organization,
        OrganizationMembership as OrganizationMembership,
        Person as Person,
        PersonDistinctId as PersonDistinctId,
        Plugin as Plugin,
        PluginAttachment as PluginAttachment,
        PluginConfig as PluginConfig,
        PluginLogEntry as PluginLogEntry,
        PluginStorage as PluginStorage,
        PropertyDefinition as PropertyDefinition,
        SessionRecordingEvent as SessionRecordingEvent,
        Team as Team,
        User as User,
    )
else:
    _absent = sorted(REQUIRED_MODELS & missing_models())
    if _absent:
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            f"POSTHOG_MODELS_MODULE={models_package()!r} has no Django model {', '.join(_absent)}:"
            " the plugin server needs PostHog's models (or the stand-ins, posthog_standin.models)."
        )
    globals().update(_resolved)


class DeadLetter(models.Model):
    """A message that could not be ingested, kept with its reason for replay."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    source = models.CharField(max_length=40, help_text="celery, kafka, ...")
    queue = models.CharField(max_length=200, help_text="queue or topic the message came from")
    reason = models.CharField(max_length=80, db_index=True, help_text="machine-readable reason")
    error = models.TextField(help_text="human-readable error")
    team_id = models.IntegerField(null=True, blank=True, db_index=True)
    event_uuid = models.UUIDField(null=True, blank=True)
    payload = models.BinaryField(help_text="the raw message as received")
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "plugin_server_deadletter"

    def __str__(self) -> str:
        return f"{self.reason} ({self.created_at:%Y-%m-%d %H:%M:%S})"


class IngestedEventUuid(models.Model):
    """The (team, uuid) of every event stored through the Postgres pipeline.

    ``posthog_event`` has no uuid column at this schema version, so the server
    keeps this index of its own to store a re-delivered event once. Keyed by
    team and uuid: another team's event that reuses a uuid is a different
    event, and is stored."""

    pk = models.CompositePrimaryKey("team_id", "uuid")
    team_id = models.IntegerField()
    uuid = models.UUIDField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "plugin_server_ingestedeventuuid"


class PluginHealth(models.Model):
    """Calls of one plugin config's method in one period (five minutes), summed over every server.

    The servers add their counts to the period's row (one upsert per server
    and flush, never per event); the admin reads the last hour and day back.
    ``buckets`` counts the calls by duration (``plugin_server.plugins.call_timing``)."""

    plugin_config_id = models.IntegerField()
    method = models.CharField(max_length=200, help_text="process_event, on_event, task.schedule.run_every_minute, ...")
    period_start = models.DateTimeField()
    calls = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    dropped = models.BigIntegerField(default=0, help_text="events the call dropped")
    total_ms = models.FloatField(default=0.0)
    buckets = ArrayField(models.BigIntegerField(), help_text="calls by duration bucket")

    class Meta:
        db_table = "plugin_server_pluginhealth"
        constraints = [
            models.UniqueConstraint(fields=["plugin_config_id", "method", "period_start"], name="plugin_server_pluginhealth_period")
        ]
        indexes = [models.Index(fields=["period_start"], name="plugin_server_health_period")]

    def __str__(self) -> str:
        return f"config {self.plugin_config_id} {self.method} at {self.period_start:%Y-%m-%d %H:%M}"
