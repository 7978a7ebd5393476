"""Form fields generated from a plugin's config schema.

A schema field of type ``string``, ``json``, ``choice`` or ``attachment``
becomes one Django form field named ``config__<key>``. ``required`` is
enforced, ``choice`` values must be among ``choices``, ``json`` must parse.
A ``secret`` field is write-only: its stored value is never rendered back
(the form says "set" or "not set") and leaving it blank keeps it.
Entries without a ``key`` (``{"markdown": "..."}`` notes in PostHog's
schemas) are shown as text, not as fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from django import forms
from django.utils.html import format_html_join

from plugin_server.plugins.meta.config import schema_fields

PREFIX = "config__"
FIELD_TYPES = ("string", "json", "choice", "attachment")


def form_name(key: str) -> str:
    return f"{PREFIX}{key}"


def schema_problems(schema: object) -> list[str]:
    """What is wrong with a config schema, in words an operator can act on ([] when fine)."""
    if isinstance(schema, Mapping):
        entries: list[tuple[str, object]] = [(f'field "{key}"', {**field, "key": key}) if isinstance(field, Mapping) else (f'field "{key}"', field) for key, field in schema.items()]
    elif isinstance(schema, list):
        entries = [(f"entry {index + 1}", field) for index, field in enumerate(schema)]
    else:
        return ["the config schema must be a list of fields or an object keyed by field key"]
    problems: list[str] = []
    seen: set[str] = set()
    for where, field in entries:
        if not isinstance(field, Mapping):
            problems.append(f"{where} must be an object")
            continue
        key = field.get("key")
        if key is None:
            if "markdown" not in field:
                problems.append(f'{where} has no "key" (only a {{"markdown": ...}} note may go without one)')
            continue
        if not isinstance(key, str) or not key:
            problems.append(f'{where}: "key" must be a non-empty string')
            continue
        if key in seen:
            problems.append(f'{where}: key "{key}" is used twice')
        seen.add(key)
        field_type = field.get("type", "string")
        if field_type not in FIELD_TYPES:
            problems.append(f'{where}: type "{field_type}" is not one of {", ".join(FIELD_TYPES)}')
        if field_type == "choice":
            choices = field.get("choices")
            if not isinstance(choices, list) or not choices or not all(isinstance(choice, str) for choice in choices):
                problems.append(f'{where}: a choice field needs "choices", a list of strings')
        for flag in ("required", "secret"):
            if flag in field and not isinstance(field[flag], bool):
                problems.append(f'{where}: "{flag}" must be true or false')
    return problems


def markdown_notes(schema: object) -> str:
    """The schema's key-less ``markdown`` notes, as HTML paragraphs (escaped: shown as text)."""
    entries = schema if isinstance(schema, list) else []
    notes = [(entry["markdown"],) for entry in entries if isinstance(entry, Mapping) and "key" not in entry and isinstance(entry.get("markdown"), str)]
    return str(format_html_join("", "<p>{}</p>", notes))


def _shown_default(field: Mapping[str, Any]) -> str | None:
    """The default as it would be typed into the field (text as is, anything else as JSON), or None."""
    default = field.get("default")
    if default in (None, "") or field.get("secret"):
        return None
    return default if isinstance(default, str) else json.dumps(default)


def _help(field: Mapping[str, Any], *extra: str) -> str:
    parts = [str(field["hint"])] if field.get("hint") else []
    default = _shown_default(field)
    if default is not None:
        parts.append(f"Default: {default}")
    parts.extend(extra)
    return " — ".join(parts)


def _empty_shows_default(field: Mapping[str, Any]) -> dict[str, str]:
    """A blank field shows the default it stands for (grey), so the form and its help say the same."""
    default = _shown_default(field)
    return {"placeholder": default} if default is not None else {}


def build_field(field: Mapping[str, Any], stored: Mapping[str, Any], attachment_name: str | None, is_new: bool) -> forms.Field:
    """The form field for one schema field, given the config's stored values."""
    key: str = field["key"]
    label = str(field.get("name") or key)
    required = bool(field.get("required"))
    field_type = field.get("type", "string")
    if field_type == "attachment":
        current = f"Current file: {attachment_name}" if attachment_name else "No file uploaded"
        return forms.FileField(label=label, required=False, help_text=_help(field, current, "upload to replace"))
    if field.get("secret"):
        state = "Secret: set — leave blank to keep it" if stored.get(key) not in (None, "") else "Secret: not set"
        return forms.CharField(
            label=label, required=False, strip=False, widget=forms.PasswordInput(render_value=False), help_text=_help(field, state)
        )
    initial = stored.get(key, field.get("default") if is_new else None)
    if field_type == "choice":
        choices = [(str(choice), str(choice)) for choice in field.get("choices") or []]
        # Left blank, the default applies when the plugin runs: the blank choice says which.
        default = _shown_default(field)
        blank = f"(default: {default})" if default is not None else "---------"
        return forms.ChoiceField(label=label, required=required, choices=[("", blank), *choices], initial=initial, help_text=_help(field))
    if field_type == "json":
        if initial is not None and not isinstance(initial, str):
            initial = json.dumps(initial, indent=2)
        widget = forms.Textarea(attrs={"rows": 4, **_empty_shows_default(field)})
        return forms.CharField(label=label, required=required, widget=widget, initial=initial, help_text=_help(field))
    unknown = [] if field_type in FIELD_TYPES else [f'type "{field_type}" unknown: edited as text']
    return forms.CharField(
        label=label, required=required, widget=forms.TextInput(attrs=_empty_shows_default(field)), initial=initial,
        help_text=_help(field, *unknown),
    )


class SchemaFields:
    """The schema's fields on one form, and the config dict they produce.

    Keys the schema does not know are kept as stored; a field left blank is
    removed from the config so that the schema default applies at run time.
    """

    def __init__(self, schema: object, stored: Mapping[str, Any], attachments: Mapping[str, str], is_new: bool) -> None:
        self.fields = schema_fields(schema)
        self.stored = dict(stored)
        self.attachment_names = dict(attachments)
        self.is_new = is_new

    @property
    def names(self) -> list[str]:
        return [form_name(field["key"]) for field in self.fields]

    def add_to(self, form: forms.BaseForm) -> None:
        for field in self.fields:
            form.fields[form_name(field["key"])] = build_field(field, self.stored, self.attachment_names.get(field["key"]), self.is_new)

    def values(self, form: forms.BaseForm) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config values, {key: uploaded file}) from the form's cleaned data; adds field errors to it."""
        values = dict(self.stored)
        uploads: dict[str, Any] = {}
        for field in self.fields:
            key, name = field["key"], form_name(field["key"])
            if name not in form.cleaned_data:
                continue  # the field itself failed validation
            value = form.cleaned_data[name]
            field_type = field.get("type", "string")
            if field_type == "attachment":
                values.pop(key, None)  # attachments live in their own table
                if value:
                    uploads[key] = value
                elif field.get("required") and key not in self.attachment_names:
                    form.add_error(name, "This file is required.")
                continue
            if value in (None, ""):
                if field.get("secret") and self.stored.get(key) not in (None, ""):
                    continue  # write-only: blank keeps the stored secret
                if field.get("secret") and field.get("required"):
                    form.add_error(name, "This field is required.")
                values.pop(key, None)
                continue
            if field_type == "json":
                try:
                    json.loads(value)
                except ValueError as error:
                    form.add_error(name, f"Enter valid JSON ({error}).")
                    continue
            values[key] = value
        return values, uploads


def schema_rows(schema: object) -> Sequence[tuple[str, str, str, str, str, str]]:
    """(key, name, type, required, secret, default) per field, for the plugin page."""
    return [
        (
            field["key"],
            str(field.get("name") or ""),
            str(field.get("type", "string")),
            "yes" if field.get("required") else "",
            "yes" if field.get("secret") else "",
            "" if field.get("default") is None else json.dumps(field["default"]),
        )
        for field in schema_fields(schema)
    ]
