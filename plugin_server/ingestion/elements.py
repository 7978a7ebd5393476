"""Autocapture elements: from ``$elements`` to element rows, group hash and chain.

The hash names an element group in ``posthog_elementgroup`` (Postgres
pipeline); the chain is the one-string form ClickHouse stores (Kafka
pipeline). Both must match PostHog's own exactly, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

TEXT_MAX_LENGTH = 400
HREF_MAX_LENGTH = 2048


@dataclass(slots=True)
class Element:
    """One DOM element of an autocapture event, as ``posthog_element`` holds it."""

    text: str | None = None
    tag_name: str | None = None
    href: str | None = None
    attr_id: str | None = None
    attr_class: list[str] | None = None
    nth_child: int | None = None
    nth_of_type: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    order: int | None = None

    def to_event_json(self) -> dict[str, Any]:
        """The element as the event row's ``elements`` list holds it: set keys only, no order."""
        stored: dict[str, Any] = {}
        for key in ("text", "tag_name", "href", "attr_class", "attr_id", "nth_child", "nth_of_type"):
            value = getattr(self, key)
            if value is not None:
                stored[key] = value
        stored["attributes"] = self.attributes
        return stored


def _text(value: object, limit: int | None = None) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return text[:limit] if limit is not None else text


def _integer(value: object) -> int | None:
    # posthog-js sends ints; anything else would fail the int column for the whole batch.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**31) <= value < 2**31 else None
    if isinstance(value, float) and value.is_integer():
        return _integer(int(value))
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value.strip()) <= 12:
        # (A longer text is out of range anyway, and int() refuses texts of thousands of digits.)
        return _integer(int(value))
    return None


def _classes(value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return [_text(item) or "" for item in value]
    return (_text(value) or "").split(" ")


def extract_elements(raw_elements: object) -> list[Element] | None:
    """Elements of a ``$elements`` value, or None when it is not a non-empty list of objects.

    None means "leave ``$elements`` in the properties as it is": an empty list
    (as the original) and, rather than losing data, a list holding something
    other than objects."""
    if not isinstance(raw_elements, list) or not raw_elements:
        return None
    if not all(isinstance(raw, dict) for raw in raw_elements):
        return None
    elements = []
    for order, raw in enumerate(raw_elements):
        elements.append(
            Element(
                text=_text(raw.get("$el_text"), TEXT_MAX_LENGTH),
                tag_name=_text(raw.get("tag_name")),
                href=_text(raw.get("attr__href"), HREF_MAX_LENGTH),
                attr_id=_text(raw.get("attr__id")),
                attr_class=_classes(raw.get("attr__class")),
                nth_child=_integer(raw.get("nth_child")),
                nth_of_type=_integer(raw.get("nth_of_type")),
                attributes={key: value for key, value in raw.items() if key.startswith("attr__")},
                order=order,
            )
        )
    return elements


def elements_hash(elements: list[Element]) -> str:
    """The element group hash: MD5 of Python's default ``json.dumps(..., sort_keys=True)``."""
    described = [
        {
            "attributes": element.attributes,
            "text": element.text,
            "tag_name": element.tag_name,
            "href": element.href,
            "attr_id": element.attr_id,
            "attr_class": element.attr_class,
            "nth_child": element.nth_child,
            "nth_of_type": element.nth_of_type,
            "order": position,
        }
        for position, element in enumerate(elements)
    ]
    return hashlib.md5(json.dumps(described, sort_keys=True).encode("utf-8")).hexdigest()


def _as_javascript_text(value: object) -> str:
    # The chain was built by JavaScript string interpolation: render values alike.
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join("" if item is None else _as_javascript_text(item) for item in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def _quoted(text: str) -> str:
    return text.replace('"', '\\"')


def _element_chain(element: Element) -> str:
    head = element.tag_name or ""
    for name in sorted(element.attr_class or []):
        head += "." + name.replace('"', "")
    pairs: dict[str, object] = {}
    if element.text:
        pairs["text"] = element.text
    pairs["nth-child"] = element.nth_child or 0
    pairs["nth-of-type"] = element.nth_of_type or 0
    if element.href:
        pairs["href"] = element.href
    if element.attr_id:
        pairs["attr_id"] = element.attr_id
    pairs.update(element.attributes)
    body = "".join(f'{_quoted(key)}="{_quoted(_as_javascript_text(pairs[key]))}"' for key in sorted(pairs))
    return f"{head}:{body}"


def elements_chain(elements: list[Element]) -> str:
    """The ``elements_chain`` text of the Kafka pipeline, ``""`` without elements."""
    return ";".join(_element_chain(element) for element in elements)


# One element of a chain: runs of anything but ";" and quotes, or quoted texts
# (whose escaped quotes and semicolons do not end them).
_CHAIN_ELEMENT = re.compile(r'(?:[^;"]|"(?:\\.|[^"\\])*")+')
# The head (tag and classes) ends at the first ":" that starts the attribute pairs.
_HEAD_AND_PAIRS = re.compile(r"(.*?)(?::([\w\-]*=.*)|:?$)")
_PAIR = re.compile(r'([^="]+)="((?:\\.|[^"\\])*)"')
_FIELDS = {"text": "text", "href": "href", "attr_id": "attr_id"}


def elements_from_chain(chain: str) -> list[Element]:
    """Elements read back from an ``elements_chain`` (to check ClickHouse output).

    Escaped quotes stay escaped (``\\"``), as PostHog reads them; ``nth-child``
    and ``nth-of-type`` become numbers; attributes other than the element's
    own fields are kept as text."""
    elements = []
    for order, part in enumerate(_CHAIN_ELEMENT.findall(chain)):
        match = _HEAD_AND_PAIRS.match(part)
        head, pairs = (match.group(1), match.group(2) or "") if match else (part, "")
        tag_name, *classes = head.split(".")
        element = Element(tag_name=tag_name or None, attr_class=classes or None, order=order)
        for key, value in _PAIR.findall(pairs):
            if key in _FIELDS:
                setattr(element, _FIELDS[key], value)
            elif key in ("nth-child", "nth-of-type"):
                setattr(element, key.replace("-", "_"), _integer(value))
            else:
                element.attributes[key] = value
        elements.append(element)
    return elements
