"""Admin pages for plugins and plugin configs, the objects an operator manages.

Every change an operator saves (and the enable / disable / reload actions)
publishes a reload on ``PLUGINS_RELOAD_PUBSUB_CHANNEL`` once the transaction
commits, so running servers pick it up. If Redis is away the change is still
saved and the page says the reload could not be published.

The list pages join what they display (``list_select_related``, one
aggregate query for counts), so their query count does not grow with the
number of rows.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import redis
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from plugin_server.admin.forms import PluginConfigForm, PluginForm
from plugin_server.admin.links import admin_url
from plugin_server.admin.records import is_list_page
from plugin_server.admin.schema_fields import SchemaFields, markdown_notes, schema_rows
from plugin_server.exceptions import PluginLoadError
from plugin_server.models import Plugin, PluginAttachment, PluginConfig, PluginLogEntry, has_model
from plugin_server.plugin_health import summarize
from plugin_server.plugins.loader import load_plugin_code
from plugin_server.pubsub import publish_reload

logger = logging.getLogger(__name__)

# Log entries shown on a plugin config's page (the full list is one click away).
LATEST_LOGS = 50


def publish_reload_on_commit(request: HttpRequest) -> None:
    """Publish a reload after the current transaction commits; warn on the page if Redis is away."""

    def publish() -> None:
        try:
            publish_reload()
        except (redis.RedisError, OSError) as error:
            logger.warning("Could not publish a plugin reload: %s", error)
            messages.warning(request, f"Saved, but running servers were not told to reload (Redis: {error}).")

    transaction.on_commit(publish)


class ReloadOnChangeMixin:
    """Publishes a reload after every save and delete made through the admin."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)  # type: ignore[misc]
        publish_reload_on_commit(request)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        super().delete_model(request, obj)  # type: ignore[misc]
        publish_reload_on_commit(request)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        super().delete_queryset(request, queryset)  # type: ignore[misc]
        publish_reload_on_commit(request)


def _pre(value: object) -> SafeString:
    text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, default=str)
    return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>', text)


class PluginAdmin(ReloadOnChangeMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    """Install and edit plugins: source text, archive upload or local folder; plugin.json and schema shown."""

    form = PluginForm
    list_display = ("id", "name", "plugin_type", "organization", "is_global", "config_count", "enabled_count", "updated_at")
    list_display_links = ("id", "name")
    list_filter = ("plugin_type", "is_global")
    list_select_related = ("organization",)
    search_fields = ("name", "url", "=id")
    ordering = ("id",)
    readonly_fields = ("plugin_json", "schema_table", "archive_size", "configs", "load_error", "created_at", "updated_at")
    actions = ("reload_plugins",)
    fieldsets = (
        (None, {"fields": ("organization", "name", "description", "plugin_type", "is_global", "tag")}),
        ("Code", {"fields": ("source", "archive_file", "archive_size", "url")}),
        ("plugin.json and config schema", {"fields": ("plugin_json", "config_schema", "schema_table")}),
        ("Status", {"fields": ("load_error", "configs", "created_at", "updated_at")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Plugin]:
        queryset: QuerySet[Plugin] = super().get_queryset(request)
        if not is_list_page(request):
            return queryset
        # The archive can be megabytes: never load it for a list.
        return cast(
            "QuerySet[Plugin]",
            queryset.defer("archive", "source").annotate(
                _configs=Count("pluginconfig"), _enabled=Count("pluginconfig", filter=Q(pluginconfig__enabled=True))
            ),
        )

    @admin.display(description="configs", ordering="_configs")
    def config_count(self, plugin: Any) -> int:
        return int(getattr(plugin, "_configs", 0))

    @admin.display(description="enabled", ordering="_enabled")
    def enabled_count(self, plugin: Any) -> int:
        return int(getattr(plugin, "_enabled", 0))

    @admin.display(description="plugin.json")
    def plugin_json(self, plugin: Plugin) -> str:
        if not plugin.pk:
            return "-"
        try:
            code = load_plugin_code(plugin)
        except PluginLoadError as error:
            return format_html('<span style="color: #ba2121">{}</span>', str(error))
        return _pre(code.plugin_json) if code.plugin_json else "(none: a one-file plugin)"

    @admin.display(description="fields")
    def schema_table(self, plugin: Plugin) -> str:
        rows = schema_rows(plugin.config_schema)
        if not rows:
            return "No config fields."
        head = "<tr><th>key</th><th>name</th><th>type</th><th>required</th><th>secret</th><th>default</th></tr>"
        body = format_html_join("", "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows)
        return format_html("<table>{}{}</table>{}", SafeString(head), body, SafeString(markdown_notes(plugin.config_schema)))

    @admin.display(description="archive")
    def archive_size(self, plugin: Plugin) -> str:
        return f"{len(plugin.archive):,} bytes stored" if plugin.archive else "none"

    @admin.display(description="configs")
    def configs(self, plugin: Plugin) -> str:
        if not plugin.pk:
            return "-"
        listed = admin_url(PluginConfig, "changelist") + f"?plugin__id__exact={plugin.pk}"
        add = admin_url(PluginConfig, "add") + f"?plugin={plugin.pk}"
        return format_html('<a href="{}">configs of this plugin</a> · <a href="{}">configure it for a team</a>', listed, add)

    @admin.display(description="last error")
    def load_error(self, plugin: Plugin) -> str:
        return _pre(plugin.error) if plugin.error else "none"

    @admin.action(description="Reload plugins on running servers", permissions=["change"])
    def reload_plugins(self, request: HttpRequest, queryset: QuerySet[Plugin]) -> None:
        publish_reload_on_commit(request)
        self.message_user(request, "Running servers were asked to reload their plugins.")


class AttachmentInline(admin.TabularInline):  # type: ignore[type-arg]
    """A config's files; uploads go through the schema's attachment fields."""

    model = PluginAttachment
    fields = ("key", "file_name", "content_type", "file_size")
    readonly_fields = fields
    extra = 0
    can_delete = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[PluginAttachment]:
        return super().get_queryset(request).defer("contents")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class HasErrorFilter(admin.SimpleListFilter):
    title = "error"
    parameter_name = "has_error"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "has an error"), ("no", "no error")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[PluginConfig]) -> QuerySet[PluginConfig]:
        if self.value() == "yes":
            return queryset.filter(error__isnull=False)
        if self.value() == "no":
            return queryset.filter(error__isnull=True)
        return queryset


class PluginConfigAdmin(ReloadOnChangeMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    """Configure a plugin for a team through its schema; see its last error and latest logs."""

    form = PluginConfigForm
    list_display = ("id", "plugin", "team", "enabled", "order", "error_summary", "updated_at")
    list_display_links = ("id", "plugin")
    list_filter = ("enabled", HasErrorFilter)
    list_select_related = ("plugin", "team")
    search_fields = ("=id", "plugin__name", "team__name")
    autocomplete_fields = ("team", "plugin")
    ordering = ("team_id", "order", "id")
    inlines = (AttachmentInline,)
    actions = ("enable", "disable", "reload_plugins", "clear_error")

    def get_queryset(self, request: HttpRequest) -> QuerySet[PluginConfig]:
        queryset = super().get_queryset(request)
        # The list shows only the plugin's name: skip its code.
        return queryset.defer("plugin__archive", "plugin__source") if is_list_page(request) else queryset

    def get_readonly_fields(self, request: HttpRequest, obj: PluginConfig | None = None) -> tuple[str, ...]:
        fields = ("last_error", "health", "latest_logs", "created_at", "updated_at")
        # The schema and the attachments belong to one plugin and one team.
        return ("team", "plugin", *fields) if obj is not None else fields

    def get_form(self, request: HttpRequest, obj: PluginConfig | None = None, change: bool = False, **kwargs: Any) -> Any:
        # Only model fields here: the schema fields are added per form instance.
        kwargs["fields"] = ["enabled", "order", "config"] if obj is not None else ["team", "plugin", "enabled", "order", "config"]
        return super().get_form(request, obj, change, **kwargs)

    # The stubs type each fieldset's options as a private TypedDict; a plain dict is what Django takes.
    def get_fieldsets(self, request: HttpRequest, obj: PluginConfig | None = None) -> list[tuple[str | None, dict[str, Any]]]:  # type: ignore[override]
        plugin = obj.plugin if obj is not None else self._plugin_of_request(request)
        schema = SchemaFields(plugin.config_schema if plugin is not None else {}, {}, {}, is_new=obj is None)
        settings_fields = schema.names or ["config"]
        description = markdown_notes(plugin.config_schema) if plugin is not None else ""
        if plugin is None:
            description = "Choose the plugin and save: its settings appear, generated from its config schema."
        fieldsets: list[tuple[str | None, dict[str, Any]]] = []
        if obj is not None and obj.error:
            fieldsets.append(("Last error", {"fields": ["last_error"], "classes": ["errors"]}))
        fieldsets.append((None, {"fields": ["team", "plugin", "enabled", "order"]}))
        fieldsets.append(("Settings", {"fields": settings_fields, "description": description}))
        if obj is not None:
            fieldsets.append(("Health", {"fields": ["health"]}))
            fieldsets.append(("Latest log entries", {"fields": ["latest_logs"]}))
            fieldsets.append(("Dates", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}))
        return fieldsets

    def _plugin_of_request(self, request: HttpRequest) -> Plugin | None:
        chosen = request.POST.get("plugin") or request.GET.get("plugin")
        return Plugin.objects.filter(pk=int(chosen)).defer("archive").first() if chosen and chosen.isdigit() else None

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        form.save_attachments(form.instance)

    @admin.display(description="error")
    def error_summary(self, config: PluginConfig) -> str:
        if not config.error:
            return ""
        message = config.error.get("message", "") if isinstance(config.error, dict) else str(config.error)
        return format_html('<span style="color: #ba2121">{}</span>', message[:120])

    @admin.display(description="last error")
    def last_error(self, config: PluginConfig) -> str:
        error = config.error
        if not error:
            return "none"
        if not isinstance(error, dict):
            return _pre(error)
        event = format_html("<p><strong>While processing:</strong></p>{}", _pre(error["event"])) if error.get("event") else ""
        return format_html(
            '<div class="errornote" style="margin: 0"><strong>{}: {}</strong><br>at {}</div>{}{}',
            error.get("name") or "Error",
            error.get("message", ""),
            error.get("time", "?"),
            _pre(error["stack"]) if error.get("stack") else "",
            event,
        )

    @admin.display(description="calls")
    def health(self, config: PluginConfig) -> str:
        summaries = summarize(config.pk)
        if not summaries:
            return "No calls in the last day (the servers write what they saw every minute)."

        def ms(value: float | None) -> str:
            return "" if value is None else f"{value:,.1f} ms"

        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((s.method, s.window, f"{s.calls:,}", f"{s.dropped:,}", f"{s.errors:,}", ms(s.mean_ms), ms(s.p95_ms)) for s in summaries),
        )
        return format_html(
            "<table><tr><th>call</th><th>window</th><th>processed</th><th>dropped</th><th>failed</th>"
            "<th>mean per call</th><th>p95 per call</th></tr>{}</table>",
            rows,
        )

    @admin.display(description="latest log entries")
    def latest_logs(self, config: PluginConfig) -> str:
        if not has_model("PluginLogEntry"):
            return "Log entries are kept in ClickHouse by this PostHog (the plugin_log_entries topic)."
        entries = (
            PluginLogEntry.objects.filter(plugin_config_id=config.pk)
            .order_by("-timestamp")
            .values_list("timestamp", "source", "type", "message")[:LATEST_LOGS]
        )
        listed = admin_url(PluginLogEntry, "changelist") + f"?plugin_config_id={config.pk}"
        link = format_html('<p><a href="{}">all log entries of this config</a></p>', listed)
        if not entries:
            return format_html("No log entries yet.{}", link)
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", ((f"{ts:%Y-%m-%d %H:%M:%S.%f}"[:-3], s, t, m[:500]) for ts, s, t, m in entries)
        )
        return format_html("<table><tr><th>time</th><th>source</th><th>type</th><th>message</th></tr>{}</table>{}", rows, link)

    @admin.action(description="Enable the selected plugin configs", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[PluginConfig]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable the selected plugin configs", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[PluginConfig]) -> None:
        self._set_enabled(request, queryset, False)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[PluginConfig], enabled: bool) -> None:
        # update() skips auto_now, and servers decide what to reload by updated_at.
        changed = queryset.update(enabled=enabled, updated_at=timezone.now())
        publish_reload_on_commit(request)
        self.message_user(request, f"{'Enabled' if enabled else 'Disabled'} {changed} plugin config(s); running servers will reload.")

    @admin.action(description="Reload plugins on running servers", permissions=["change"])
    def reload_plugins(self, request: HttpRequest, queryset: QuerySet[PluginConfig]) -> None:
        publish_reload_on_commit(request)
        self.message_user(request, "Running servers were asked to reload their plugins.")

    @admin.action(description="Clear the last error", permissions=["change"])
    def clear_error(self, request: HttpRequest, queryset: QuerySet[PluginConfig]) -> None:
        cleared = queryset.exclude(error__isnull=True).update(error=None, updated_at=timezone.now())
        self.message_user(request, f"Cleared the error of {cleared} plugin config(s).")
