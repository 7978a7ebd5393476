"""How ``$set``, ``$set_once`` and ``$increment`` change a person's properties.

Pure functions, no I/O: the person manager applies them in memory, in event
order, to persons it holds locked, and writes the result once per batch.
Folding the updates of many events this way gives the same properties as
applying them one event at a time.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

# The original's test of "looks numeric" on the stored value's text.
_NUMERIC_TEXT = re.compile(r"^([-+])?[0-9.]+$")


def as_dict(value: Any) -> dict[str, Any]:
    """A ``$set``-like value as a dict; anything that is not a non-empty dict counts as empty."""
    return value if isinstance(value, dict) else {}


def valid_increments(value: Any) -> dict[str, int]:
    """The ``$increment`` entries the original keeps: whole, finite, non-zero numbers.

    ``NaN``, ``Infinity``, ``1.2``, ``"1"``, ``0`` and booleans are dropped.
    A whole float such as ``2.0`` counts as the integer 2."""
    kept: dict[str, int] = {}
    for key, amount in as_dict(value).items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            continue
        if isinstance(amount, float) and (not math.isfinite(amount) or not amount.is_integer()):
            continue
        if amount == 0:
            continue
        kept[key] = int(amount)
    return kept


def _stored_text(value: Any) -> str | None:
    # What Postgres' ``properties ->> key`` renders for a stored JSON value.
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return json.dumps(value, separators=(", ", ": "))


def incremented(current: Any, amount: int) -> Any | None:
    """``current + amount`` as the original's SQL computes it, or None to leave the value alone.

    A missing value counts as 0; a value whose text looks numeric (``5``,
    ``"5"``, ``-2.5``) is added to exactly; anything else (``"world"``, a
    list, ``true``) is left unchanged."""
    text = _stored_text(current)
    if text is None:
        return amount
    if not _NUMERIC_TEXT.match(text):
        return None
    try:
        total = Decimal(text) + amount
    except InvalidOperation:  # "1.2.3" looks numeric to the pattern but is not a number
        return None
    if total == total.to_integral_value():
        return int(total)
    return float(total)


def updated_properties(
    properties: dict[str, Any], set_: dict[str, Any], set_once: dict[str, Any], increments: dict[str, int]
) -> dict[str, Any]:
    """The properties after one event: ``$set`` overwrites, ``$set_once`` fills gaps, then increments.

    The increments are applied on top of ``$set`` (in place of the
    original's "database value wins" quirk, as its own rules allow). Unlike the
    original, an increment key is used as given: ``my-prop`` increments
    ``my-prop``, not ``myprop`` (the stripping only guarded its SQL text)."""
    result = {**set_once, **properties, **set_}
    for key, amount in increments.items():
        value = incremented(result.get(key), amount)
        if value is not None:
            result[key] = value
    return result


def merged_properties(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """A merge keeps the surviving person's values and adds keys only the other one has."""
    return {**other, **into}


def jsonb_text(properties: dict[str, Any]) -> str:
    """The properties as JSON text Postgres' jsonb accepts.

    jsonb refuses the NUL character and non-finite numbers; they become
    U+FFFD and null rather than failing the whole batch for one value."""
    try:
        text = json.dumps(properties, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:  # NaN or Infinity somewhere
        return json.dumps(_storable(properties), separators=(",", ":"), default=str)
    if "\\u0000" in text:
        return json.dumps(_storable(properties), separators=(",", ":"), default=str)
    return text


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_storable(item) for item in value]
    return value
