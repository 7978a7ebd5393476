"""The admin's forms: a plugin with its code, a plugin config edited through its schema."""

from __future__ import annotations

import ast
from typing import Any, cast

from django import forms
from django.core.files.uploadedfile import UploadedFile

from plugin_server.admin.schema_fields import SchemaFields, schema_problems
from plugin_server.exceptions import PluginLoadError
from plugin_server.models import Plugin, PluginAttachment, PluginConfig
from plugin_server.plugins.code import PluginCode
from plugin_server.plugins.loader import load_plugin_code

# Largest archive an operator may upload (bytes); GitHub/npm plugin archives are far smaller.
MAX_ARCHIVE_BYTES = 32 * 1024 * 1024


class PluginForm(forms.ModelForm):  # type: ignore[type-arg]
    """A plugin: its kind and code (source text, archive upload or local folder) and its config schema.

    On save the code is read the way the server reads it, so an operator
    learns at once that an archive has no ``main.py`` or that the source has
    a syntax error. For archive and local plugins an empty schema is taken
    from the plugin's ``plugin.json``.
    """

    archive_file = forms.FileField(
        required=False, label="Archive upload", help_text="A .zip or .tgz holding plugin.json and main.py (replaces the stored archive)."
    )

    class Meta:
        model = Plugin
        fields = ["organization", "name", "description", "plugin_type", "is_global", "url", "tag", "source", "config_schema"]
        widgets = {
            "source": forms.Textarea(attrs={"rows": 24, "cols": 100, "spellcheck": "false", "style": "font-family: monospace"}),
            "config_schema": forms.Textarea(attrs={"rows": 10, "cols": 100, "style": "font-family: monospace"}),
        }
        help_texts = {
            "plugin_type": "Left empty, it follows from what you give: source text, an archive, or a file: url.",
            "url": "For a local plugin: file:<folder>, resolved against BASE_DIR.",
            "source": "For a source plugin: the text of main.py.",
            "config_schema": "A list of fields {key, name, type (string, json, choice, attachment), required, secret, default, hint, choices}.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["source"].strip = False  # type: ignore[attr-defined]  # code keeps its whitespace
        self.code: PluginCode | None = None
        self.archive: bytes | None = None

    def clean_archive_file(self) -> UploadedFile | None:
        upload: UploadedFile | None = self.cleaned_data.get("archive_file")
        if upload is not None:
            if (upload.size or 0) > MAX_ARCHIVE_BYTES:
                raise forms.ValidationError(f"The archive is larger than {MAX_ARCHIVE_BYTES // (1024 * 1024)} MiB.")
            self.archive = upload.read()
        return upload

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        archive = self.archive if self.archive is not None else self.instance.archive
        kind = cleaned.get("plugin_type") or _inferred_kind(cleaned, archive)
        cleaned["plugin_type"] = kind
        url = cleaned.get("url") or ""
        if kind == Plugin.PluginType.SOURCE and not cleaned.get("source"):
            self.add_error("source", "A source plugin needs its source text.")
        elif kind == Plugin.PluginType.LOCAL and not url.startswith("file:"):
            self.add_error("url", "A local plugin needs a url of the form file:<folder>.")
        elif kind in (Plugin.PluginType.CUSTOM, Plugin.PluginType.REPOSITORY) and not archive and not url.startswith("file:"):
            self.add_error("archive_file", "Upload the plugin's archive.")
        elif kind is None:
            raise forms.ValidationError("Give the plugin's source text, an archive or a file: url.")
        if self.errors:
            return cleaned
        probe = Plugin(
            pk=self.instance.pk,
            # An unsaved probe: a missing organization is the form's error, not a crash.
            organization_id=getattr(cleaned.get("organization"), "pk", None),  # type: ignore[misc]
            name=cleaned.get("name") or "",
            plugin_type=kind,
            is_global=bool(cleaned.get("is_global")),
            url=url,
            source=cleaned.get("source"),
            archive=archive,
        )
        try:
            self.code = load_plugin_code(probe)
        except PluginLoadError as error:
            raise forms.ValidationError(f"The plugin cannot be loaded: {error}") from None
        try:
            ast.parse(self.code.source, filename=self.code.main_filename)
        except SyntaxError as error:
            target = "source" if kind == Plugin.PluginType.SOURCE else None
            self.add_error(target, f"{self.code.main_filename}, line {error.lineno}: {error.msg}")
        if cleaned.get("config_schema") is None:
            cleaned["config_schema"] = {}  # the column is not nullable; empty means no fields
        if not cleaned["config_schema"] and self.code.plugin_json.get("config"):
            cleaned["config_schema"] = self.code.plugin_json["config"]
        if not cleaned.get("name") and self.code.plugin_json.get("name"):
            cleaned["name"] = self.code.plugin_json["name"]
        for problem in schema_problems(cleaned.get("config_schema") or {}):
            self.add_error("config_schema", problem)
        return cleaned

    def save(self, commit: bool = True) -> Plugin:
        plugin: Plugin = super().save(commit=False)
        if self.archive is not None:
            plugin.archive = self.archive
        if commit:
            plugin.save()
        return plugin


def _inferred_kind(cleaned: dict[str, Any], archive: bytes | None) -> str | None:
    if (cleaned.get("url") or "").startswith("file:"):
        return str(Plugin.PluginType.LOCAL)
    if cleaned.get("source"):
        return str(Plugin.PluginType.SOURCE)
    if archive:
        return str(Plugin.PluginType.CUSTOM)
    return None


class PluginConfigForm(forms.ModelForm):  # type: ignore[type-arg]
    """One plugin for one team: the config values are form fields generated from the plugin's schema.

    The plugin is the saved config's, or (adding) the one chosen in the form
    or passed as ``?plugin=<id>``. A plugin without a schema gets the raw
    JSON editor for its config instead.
    """

    class Meta:
        model = PluginConfig
        fields = ["team", "plugin", "enabled", "order", "config"]
        help_texts = {"order": "Position in the team's chain: lower runs first."}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "team" in self.fields:
            self.fields["team"].required = True  # a config without a team is never run
        self.plugin = self._chosen_plugin()
        attachments: dict[str, str] = {}
        if self.instance.pk:
            attachments = dict(PluginAttachment.objects.filter(plugin_config=self.instance).values_list("key", "file_name"))
        schema = self.plugin.config_schema if self.plugin is not None else {}
        self.schema = SchemaFields(schema, self.instance.config or {}, attachments, is_new=self.instance.pk is None)
        if self.schema.fields:
            self.fields.pop("config", None)
            self.schema.add_to(self)
        elif "config" in self.fields:
            # An empty object is a valid config; PostHog's column is not blank=True, which would refuse {}.
            self.fields["config"].required = False
        self.uploads: dict[str, UploadedFile] = {}

    def _chosen_plugin(self) -> Plugin | None:
        if self.instance.plugin_id:
            return cast(Plugin, self.instance.plugin)
        chosen = self.data.get(self.add_prefix("plugin")) if self.is_bound else self.initial.get("plugin")
        chosen = getattr(chosen, "pk", chosen)
        try:
            return Plugin.objects.filter(pk=int(chosen)).first() if chosen else None
        except (TypeError, ValueError):
            return None  # the plugin field reports the bad choice

    def clean_config(self) -> Any:
        config = self.cleaned_data.get("config")
        if config is not None and not isinstance(config, dict):
            raise forms.ValidationError("The config must be a JSON object.")
        return config if config is not None else {}

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if self.schema.fields:
            self.config_values, self.uploads = self.schema.values(self)
        return cleaned

    def save(self, commit: bool = True) -> PluginConfig:
        config: PluginConfig = super().save(commit=False)
        if self.schema.fields:
            config.config = self.config_values
        if commit:
            config.save()
            self.save_attachments(config)
        return config

    def save_attachments(self, config: PluginConfig) -> None:
        """Store the uploaded files as the config's attachments, replacing those with the same key."""
        for key, upload in self.uploads.items():
            contents = upload.read()
            PluginAttachment.objects.filter(plugin_config=config, key=key).delete()
            PluginAttachment.objects.create(
                plugin_config=config,
                team_id=config.team_id,
                key=key,
                content_type=upload.content_type or "application/octet-stream",
                file_name=upload.name or key,
                file_size=len(contents),
                contents=contents,
            )
