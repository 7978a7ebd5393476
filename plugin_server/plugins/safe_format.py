"""``str.format`` / ``str.format_map`` whose fields are resolved through the plugin guards.

The built-in ``str.format`` resolves ``{0.attr}`` and ``{0[key]}`` inside C
code, past every guard: ``"{0.__class__.__base__}".format(x)`` walks
anywhere. Refusing the name ``format`` on ``str`` was not enough, because
other objects carry the same C method on (``collections.UserString.format``
calls ``self.data.format`` in the standard library, and any stdlib code a
plugin can reach may do the same).

So the fix is structural: :class:`SafeFormatter` implements the format
language itself (the C parser ``_string.formatter_parser`` splits the
template, we resolve each field) and resolves every attribute and item
through the guards the compiled plugin code uses, so a field reaches
exactly what the plugin could reach by writing the expression itself. The
guards hand plugins this formatter for ``str.format``/``format_map``, and
:func:`install_safe_format` puts it in place of the C methods on the
``str`` type itself, in the worker processes only (never in the main
process), so whatever carries the call, it ends here.

``%``-formatting reads items only (``"%(key)s" % mapping`` is
``mapping[key]``), as does ``string.Template``; f-strings are compiled
code, guarded like any other expression; format specs (after the colon)
never read attributes.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import _string  # type: ignore[import-not-found]  # CPython's format-string parser (no stubs)

MAX_NESTING = 2


class _Numbering:
    """Automatic (``{}``) or manual (``{0}``) field numbering, which a template may not mix."""

    __slots__ = ("mode", "next")

    def __init__(self) -> None:
        self.mode = ""
        self.next = 0

    def index(self, first: int | str) -> int | str:
        if first == "":
            if self.mode == "manual":
                raise ValueError("cannot switch from manual field specification to automatic field numbering")
            self.mode = "auto"
            self.next += 1
            return self.next - 1
        if isinstance(first, int):
            if self.mode == "auto":
                raise ValueError("cannot switch from automatic field numbering to manual field specification")
            self.mode = "manual"
        return first


class SafeFormatter:
    """The format language, with attribute and item access delegated to ``getattr_`` / ``getitem_``."""

    def __init__(self, getattr_: Callable[[Any, str], Any], getitem_: Callable[[Any, Any], Any]) -> None:
        self._getattr = getattr_
        self._getitem = getitem_

    def format(self, template: str, /, *args: Any, **kwargs: Any) -> str:
        """``template.format(*args, **kwargs)``."""
        return self._render(_text(template), args, kwargs, _Numbering(), 0)

    def format_map(self, template: str, mapping: Mapping[str, Any], /) -> str:
        """``template.format_map(mapping)``."""
        return self._render(_text(template), (), mapping, _Numbering(), 0)

    def _render(self, template: str, args: Sequence[Any], kwargs: Mapping[str, Any], numbering: _Numbering, depth: int) -> str:
        if depth > MAX_NESTING:
            raise ValueError("Max string recursion exceeded")
        parts: list[str] = []
        for literal, field, spec, conversion in _string.formatter_parser(template):
            if literal:
                parts.append(literal)
            if field is None:
                continue
            value = self._field(field, args, kwargs, numbering)
            if conversion == "r":
                value = repr(value)
            elif conversion == "s":
                value = str(value)
            elif conversion == "a":
                value = ascii(value)
            elif conversion is not None:
                raise ValueError(f"Unknown conversion specifier {conversion}")
            if spec and "{" in spec:
                spec = self._render(spec, args, kwargs, numbering, depth + 1)
            parts.append(format(value, spec or ""))
        return "".join(parts)

    def _field(self, field: str, args: Sequence[Any], kwargs: Mapping[str, Any], numbering: _Numbering) -> Any:
        first, rest = _string.formatter_field_name_split(field)
        key = numbering.index(first)
        value = args[key] if isinstance(key, int) else kwargs[key]
        for is_attribute, name in rest:
            value = self._getattr(value, name) if is_attribute else self._getitem(value, name)
        return value

    def bound(self, template: str, name: str) -> Callable[..., str]:
        """``template.format`` (``name`` "format") or ``template.format_map`` as a plugin sees it."""
        text = _text(template)
        if name == "format":
            return lambda *args, **kwargs: self.format(text, *args, **kwargs)
        return lambda mapping: self.format_map(text, mapping)


def _text(template: Any) -> str:
    if type(template) is str:
        return template
    if isinstance(template, str):
        # A str subclass: its characters, read through str's own slot (none of its methods run).
        return str.__str__(template)
    raise TypeError(f"descriptor 'format' requires a 'str' object but received a '{type(template).__name__}'")


def install_safe_format(formatter: SafeFormatter) -> None:
    """Replace ``str.format`` and ``str.format_map`` by ``formatter``'s, in this process (plugin workers only).

    Built-in types refuse attribute writes, so the type's own dictionary is
    changed (reached through ``gc.get_referents`` of its mapping proxy) and
    the type's method cache invalidated. Checked afterwards: a worker in
    which this did not take effect must not run plugins.
    """

    def safe_format(self: str, /, *args: Any, **kwargs: Any) -> str:
        return formatter.format(self, *args, **kwargs)

    def safe_format_map(self: str, mapping: Mapping[str, Any], /) -> str:
        return formatter.format_map(self, mapping)

    (namespace,) = gc.get_referents(str.__dict__)
    namespace["format"] = safe_format
    namespace["format_map"] = safe_format_map
    ctypes.pythonapi.PyType_Modified(ctypes.py_object(str))
    if str.format is not safe_format or str.format_map is not safe_format_map:
        raise RuntimeError("could not install the plugin-safe str.format")
