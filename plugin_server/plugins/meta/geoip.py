"""``meta.geoip.locate(ip)``: the GeoIP2 City record of an address.

The record is MaxMind's, as a dict with MaxMind's snake_case keys
(``city.names.en``, ``country.iso_code``, ``location.time_zone``, ...) plus
``traits.ip_address`` and ``traits.network``; ``None`` when the address is not
in the database or is not an address at all. With ``DISABLE_MMDB`` or no
database, ``locate`` raises the original's "not available" error.

Where the database comes from is the MMDB service's business: this module
opens ``MMDB_PATH`` when set, and :meth:`GeoIPLocator.use` swaps in any other
reader (for example one opened from the attachment bytes with
:func:`reader_from_bytes`) without interrupting lookups.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb

from plugin_server.config import get_config
from plugin_server.exceptions import MetaCallError
from plugin_server.plugins.meta.context import PluginContext

NOT_AVAILABLE = "IP location capabilities are not available in this PostHog instance!"


def reader_from_bytes(contents: bytes) -> geoip2.database.Reader:
    """A reader over an uncompressed MMDB file held in memory."""
    buffer = io.BytesIO(contents)
    # MODE_FD reads the whole file object and wants a name for it.
    buffer.name = "<memory>"
    return geoip2.database.Reader(buffer, mode=maxminddb.MODE_FD)


class GeoIPLocator:
    """Serves ``meta.geoip``; the database is opened on first use."""

    def __init__(self, reader: geoip2.database.Reader | None = None) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self._opened_path: str | None = None

    def use(self, reader: geoip2.database.Reader | None) -> None:
        """Serve lookups from ``reader`` from now on (None: GeoIP unavailable)."""
        with self._lock:
            self._reader = reader

    def _current(self) -> geoip2.database.Reader:
        config = get_config()
        if config.disable_mmdb:
            raise MetaCallError(NOT_AVAILABLE)
        with self._lock:
            if self._reader is None and config.mmdb_path and self._opened_path != config.mmdb_path:
                # Remember the attempt: a missing file is not retried on every lookup.
                self._opened_path = config.mmdb_path
                try:
                    self._reader = geoip2.database.Reader(config.mmdb_path)
                except (OSError, maxminddb.InvalidDatabaseError) as error:
                    raise MetaCallError(NOT_AVAILABLE) from error
            if self._reader is None:
                raise MetaCallError(NOT_AVAILABLE)
            return self._reader

    def locate(self, ctx: PluginContext, ip: object) -> dict[str, Any] | None:
        reader = self._current()
        if not isinstance(ip, str):
            return None
        try:
            return reader.city(ip).to_dict()
        except (ValueError, geoip2.errors.AddressNotFoundError):
            # Not an address, or not in the database (the original's null).
            return None
