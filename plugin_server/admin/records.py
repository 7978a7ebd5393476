"""Admin pages for organizations and teams, and read-only lists of plugin logs and dead letters."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.utils.functional import cached_property
from django.http import HttpRequest
from django.utils.html import format_html

from plugin_server.admin.links import admin_url
from plugin_server.ingestion.dlq import replay
from plugin_server.models import DeadLetter, Organization, PluginConfig, PluginLogEntry, Team

# Bytes of a dead letter's payload shown on its page.
PAYLOAD_PREVIEW_BYTES = 64 * 1024


def is_list_page(request: HttpRequest) -> bool:
    """True on a changelist, where large columns (archives, payloads) are never shown."""
    match = request.resolver_match
    return match is not None and (match.url_name or "").endswith("_changelist")


class OrganizationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Organizations; plugins run only where ``plugins_access_level`` is above none."""

    list_display = ("name", "plugins_access_level", "created_at")
    list_filter = ("plugins_access_level",)
    search_fields = ("name",)
    ordering = ("name",)
    readonly_fields = ("id", "created_at", "updated_at")
    fields = ("id", "name", "plugins_access_level", "created_at", "updated_at")


class TeamAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Teams (projects); a new team gets a random api token when none is given."""

    list_display = ("id", "name", "organization", "api_token", "anonymize_ips", "ingested_event")
    list_display_links = ("id", "name")
    list_select_related = ("organization",)
    search_fields = ("=id", "name", "=api_token")
    ordering = ("id",)
    autocomplete_fields = ("organization",)
    readonly_fields = ("uuid", "ingested_event", "created_at", "updated_at")
    fields = ("organization", "name", "api_token", "anonymize_ips", "session_recording_opt_in", "app_urls", "timezone", "uuid", "ingested_event", "created_at", "updated_at")

    def save_model(self, request: HttpRequest, obj: Team, form: Any, change: bool) -> None:
        if not obj.api_token:
            obj.api_token = secrets.token_urlsafe(32)
        super().save_model(request, obj, form, change)


class EstimatedCountPaginator(Paginator):  # type: ignore[type-arg]
    """Counts an unfiltered list from Postgres's statistics when the table is large.

    ``COUNT(*)`` over millions of log entries takes seconds on every page
    view; ``pg_class.reltuples`` (kept by autovacuum's ANALYZE) answers at
    once. Filtered lists, and tables under ``estimate_above`` rows, are
    counted exactly."""

    estimate_above = 100_000

    def __init__(self, object_list: Any, per_page: int, *args: Any, estimate_above: int | None = None, **kwargs: Any) -> None:
        super().__init__(object_list, per_page, *args, **kwargs)
        if estimate_above is not None:
            self.estimate_above = estimate_above

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not queryset.query.where:
            with connections[queryset.db].cursor() as cursor:
                cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)", [queryset.model._meta.db_table])
                row = cursor.fetchone()
            if row is not None and row[0] is not None and int(row[0]) > self.estimate_above:
                return int(row[0])
        return int(super().count)


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Viewable, never added, changed or deleted here: the server writes these rows."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class PluginLogEntryAdmin(ReadOnlyAdmin):
    """Plugin log entries, newest first; filter by type and source, or by ``?plugin_config_id=``."""

    list_display = ("timestamp", "config_link", "team_id", "source", "type", "short_message")
    list_filter = ("type", "source")
    search_fields = ("message",)
    ordering = ("-timestamp",)
    # Counting every entry of a large table is slow; the pages do not need it.
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    # Filters by id through the query string (the config page links here).
    ID_FILTERS = frozenset({"plugin_config_id", "team_id", "plugin_id"})

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        return lookup in self.ID_FILTERS or super().lookup_allowed(lookup, value, request)

    @admin.display(description="plugin config", ordering="plugin_config_id")
    def config_link(self, entry: PluginLogEntry) -> str:
        url = admin_url(PluginConfig, "change", entry.plugin_config_id)
        return format_html('<a href="{}">{}</a>', url, entry.plugin_config_id)

    @admin.display(description="message")
    def short_message(self, entry: PluginLogEntry) -> str:
        message = str(entry.message)
        return message if len(message) <= 200 else message[:200] + "…"


class DeadLetterAdmin(ReadOnlyAdmin):
    """Messages that could not be ingested. The actions replay them (their raw message back onto
    the queue it came from, for the running servers to take again) or purge them, as
    ``./manage.py dead_letters replay|purge`` does. Rows are never edited here."""

    actions = ("replay_letters", "purge_letters")

    list_display = ("created_at", "source", "queue", "reason", "team_id", "event_uuid", "replayed_at")
    list_filter = ("source", "reason", ("replayed_at", admin.EmptyFieldListFilter))
    search_fields = ("=event_uuid", "error")
    ordering = ("-created_at",)
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    readonly_fields = ("id", "created_at", "source", "queue", "reason", "error", "team_id", "event_uuid", "replayed_at", "payload_text")
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeadLetter]:
        queryset = super().get_queryset(request)
        # Payloads can be large: load them only on the one letter's page.
        return queryset.defer("payload") if is_list_page(request) else queryset

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(f"{DeadLetter._meta.app_label}.change_deadletter"))

    def has_purge_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm(f"{DeadLetter._meta.app_label}.delete_deadletter"))

    @admin.action(description="Replay the selected dead letters (back onto their queue)", permissions=["replay"])
    def replay_letters(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        try:
            count = replay(queryset.iterator(chunk_size=500))
        except ValueError as error:
            self.message_user(request, str(error), messages.ERROR)
            return
        self.message_user(request, f"Replayed {count} dead letter(s): the running servers take them again.", messages.SUCCESS)

    @admin.action(description="Purge (delete) the selected dead letters", permissions=["purge"])
    def purge_letters(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        count, _ = queryset.delete()
        self.message_user(request, f"Purged {count} dead letter(s).", messages.SUCCESS)

    @admin.display(description="payload")
    def payload_text(self, letter: DeadLetter) -> str:
        payload = bytes(letter.payload or b"")
        shown = payload[:PAYLOAD_PREVIEW_BYTES].decode("utf-8", errors="backslashreplace")
        more = f"\n… {len(payload) - PAYLOAD_PREVIEW_BYTES:,} more bytes" if len(payload) > PAYLOAD_PREVIEW_BYTES else ""
        return format_html('<pre style="white-space: pre-wrap">{}{}</pre>', shown, more)
