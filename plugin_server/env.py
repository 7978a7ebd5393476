"""Reading settings from the environment, with one clear line per bad value.

The parsing rules are the original's: booleans are true
for ``y, yes, t, true, on, 1``; numbers must parse; everything else is text.
Unlike the original, a malformed number or URL stops start-up with a message
that names the variable and what was expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

TRUE_VALUES = frozenset({"y", "yes", "t", "true", "on", "1"})


def env_str(name: str, default: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    value = environ.get(name)
    return default if value is None else value


def env_bool(name: str, default: bool, environ: Mapping[str, str] = os.environ) -> bool:
    value = environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in TRUE_VALUES


def env_int(name: str, default: int, environ: Mapping[str, str] = os.environ, minimum: int | None = 0) -> int:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value)
        if number != int(number):
            raise ValueError(value)
        parsed = int(number)
    except (ValueError, OverflowError):
        raise ImproperlyConfigured(f"{name}={value!r} is not valid: expected a whole number") from None
    if minimum is not None and parsed < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} is not valid: expected a whole number >= {minimum}")
    return parsed


def env_float(name: str, default: float, environ: Mapping[str, str] = os.environ, minimum: float | None = 0) -> float:
    value = environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        parsed = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not valid: expected a number") from None
    if minimum is not None and parsed < minimum:
        raise ImproperlyConfigured(f"{name}={value!r} is not valid: expected a number >= {minimum}")
    return parsed


def env_url(name: str, default: str, schemes: tuple[str, ...], environ: Mapping[str, str] = os.environ) -> str:
    value = environ.get(name) or default
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
        valid = parts.scheme in schemes and bool(parts.hostname or parts.path.strip("/"))
    except ValueError:
        valid = False
    if not valid:
        expected = " or ".join(f"{scheme}://..." for scheme in schemes)
        # The message goes to logs and terminals: never echo the credentials.
        shown = re.sub(r"//[^/@]*@", "//***@", value)
        raise ImproperlyConfigured(f"{name}={shown!r} is not valid: expected a URL like {expected}")
    return value


def env_choice(name: str, default: str, choices: tuple[str, ...], environ: Mapping[str, str] = os.environ) -> str:
    value = (environ.get(name) or default).strip().lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not valid: expected one of {', '.join(choices)}")
    return value
