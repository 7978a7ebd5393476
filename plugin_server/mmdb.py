"""The GeoIP (MMDB) service: where ``meta.geoip`` gets its database.

The database is shared by every server through one ``posthog_pluginattachment``
row: key ``@posthog/mmdb``, no team, no plugin config, the MaxMind DB
Brotli-compressed in ``contents`` and its build date in ``file_name``
(``GeoLite2-City-2021-05-11.mmdb.br``). At start (:meth:`MMDBService.prepare`):

1. the first such row by file name is used; its file name must hold a
   ``YYYY-MM-DD`` date and its contents must be there;
2. no row: the database is downloaded (below) and stored in the row for
   every server; nothing came: GeoIP is unavailable (a warning);
3. a row older than ``STALE_AFTER`` (45 days) is used at once and a fresh
   copy is downloaded in the background.

Every ``refresh_interval`` (4 h) the service looks again; a fresh copy is
swapped into the locator between two lookups (:meth:`GeoIPLocator.use`):
ingestion never stops for it.

**One download for the cluster.** The Redis key
``@posthog-plugin-server/mmdb-status`` (a JSON string) says what the servers
are doing: missing or ``"idle"`` — free to download; ``"fetching"`` (TTL
120 s) — another server is downloading, wait (polling every 200 ms) and then
read the row it stored; ``"unavailable"`` (TTL 120 s) — the last download
failed, do not try again yet. A download GETs ``MMDB_DOWNLOAD_URL`` without
decoding the body, takes the file name from ``Content-Disposition``, stores
the raw (compressed) body as ``<name>.br`` and deletes the other rows; then
the status is ``"idle"`` again. Any failure sets ``"unavailable"``.

Not run when ``DISABLE_MMDB`` is set (``meta.geoip.locate`` then raises the
original's "not available" error) or when ``MMDB_PATH`` names an operator's
own file, which the locator opens instead.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, cast

import brotli  # type: ignore[import-untyped]  # no stubs
import geoip2.database
import maxminddb
import redis
import requests
from django.db import close_old_connections, connection, transaction

from plugin_server.metrics import MMDB_REFRESHED, get_metrics
from plugin_server.models import PluginAttachment
from plugin_server.plugins.meta.geoip import GeoIPLocator, reader_from_bytes
from plugin_server.redis_client import get_redis
from plugin_server.service import Service

logger = logging.getLogger(__name__)

ATTACHMENT_KEY = "@posthog/mmdb"
STATUS_KEY = "@posthog-plugin-server/mmdb-status"
STALE_AFTER = timedelta(days=45)
REFRESH_INTERVAL = 4 * 3600.0
STATUS_TTL_SECONDS = 120
STATUS_POLL_SECONDS = 0.2
DOWNLOAD_TIMEOUT = 60.0
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024
CONTENT_TYPE = "vnd.maxmind.maxmind-db"
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_FILENAME = re.compile(r'filename="?([^";]+)"?')


# Set the status to ARGV[2] (with a TTL) only when it is missing or ARGV[1] ("idle").
_CLAIM_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


class MMDBError(Exception):
    """The stored database cannot be used (no contents, no date in its name, not a MaxMind DB)."""


@dataclass(frozen=True, slots=True)
class StoredDatabase:
    """The attachment row's database, opened."""

    reader: geoip2.database.Reader
    file_name: str
    built: date

    def stale(self, today: date) -> bool:
        return today - self.built > STALE_AFTER


def _built_on(file_name: str) -> date:
    match = _DATE.search(file_name)
    if match is None:
        raise MMDBError(f"the stored GeoIP database's file name {file_name!r} holds no YYYY-MM-DD date")
    return date(int(match[1]), int(match[2]), int(match[3]))


def open_compressed(contents: bytes) -> geoip2.database.Reader:
    """A reader over a Brotli-compressed MaxMind DB."""
    try:
        return reader_from_bytes(brotli.decompress(contents))
    except (brotli.error, maxminddb.InvalidDatabaseError, ValueError) as error:
        raise MMDBError(f"the GeoIP database is not a Brotli-compressed MaxMind DB ({error})") from error


def load_stored() -> StoredDatabase | None:
    """The shared database row, opened (None when there is none)."""
    row = (
        PluginAttachment.objects.filter(key=ATTACHMENT_KEY, plugin_config__isnull=True, team__isnull=True)
        .order_by("file_name")
        .values_list("file_name", "contents")
        .first()
    )
    if row is None:
        return None
    file_name, contents = row
    if contents is None:
        raise MMDBError("the stored GeoIP database has no contents")
    built = _built_on(file_name)
    return StoredDatabase(open_compressed(bytes(contents)), file_name, built)


def _load_usable() -> StoredDatabase | None:
    """The stored database, or None when there is none or it cannot be used (logged: a download replaces it)."""
    try:
        return load_stored()
    except MMDBError:
        logger.exception("mmdb: the stored GeoIP database cannot be used; a fresh one is downloaded")
        return None


def store(file_name: str, content_type: str, contents: bytes) -> None:
    """Keep ``contents`` as the one shared database row (one transaction: insert, delete the others)."""
    with transaction.atomic():
        row = PluginAttachment.objects.create(
            key=ATTACHMENT_KEY,
            content_type=content_type,
            file_name=file_name,
            file_size=len(contents),
            contents=contents,
            plugin_config=None,
            team=None,
        )
        PluginAttachment.objects.filter(key=ATTACHMENT_KEY).exclude(id=row.id).delete()


class MMDBService(Service):
    """Prepares, shares and refreshes the GeoIP database; hands it to ``locator``."""

    name = "mmdb"

    def __init__(
        self,
        locator: GeoIPLocator,
        url: str,
        client: redis.Redis | None = None,
        refresh_interval: float = REFRESH_INTERVAL,
        today: Any = None,
    ) -> None:
        super().__init__()
        self.locator = locator
        self.url = url
        self._redis = client or get_redis()
        self.refresh_interval = refresh_interval
        self._today = today or (lambda: datetime.now(timezone.utc).date())
        self.current: StoredDatabase | None = None
        self._claim = self._redis.register_script(_CLAIM_SCRIPT)
        self._refresh_soon = False

    # --- status in Redis -------------------------------------------------------------

    def status(self) -> str:
        raw = cast(bytes | None, self._redis.get(STATUS_KEY))
        if raw is None:
            return "idle"
        try:
            value = json.loads(raw)
        except ValueError:
            return "idle"
        return value if isinstance(value, str) else "idle"

    def _set_status(self, value: str, ttl: int | None = None) -> None:
        self._redis.set(STATUS_KEY, json.dumps(value), ex=ttl)

    def _claim_download(self) -> bool:
        """Set "fetching" only while the status is idle: one server downloads."""
        return bool(self._claim(keys=[STATUS_KEY], args=[json.dumps("idle"), json.dumps("fetching"), STATUS_TTL_SECONDS]))

    # --- obtaining the database -----------------------------------------------------

    def prepare(self) -> None:
        """At start: the stored database, or a downloaded one; a stale one is refreshed in the background."""
        stored = _load_usable()
        if stored is not None:
            self._use(stored)
            if stored.stale(self._today()):
                logger.info("mmdb: the stored GeoIP database (%s) is over 45 days old; refreshing in the background", stored.file_name)
                self._refresh_soon = True
            return
        fetched = self.fetch_shared()
        if fetched is None:
            logger.warning("mmdb: no GeoIP database could be had; meta.geoip is unavailable until the next refresh")
        else:
            self._use(fetched)

    def fetch_shared(self) -> StoredDatabase | None:
        """Download once for the cluster (the status key), or take what another server stored."""
        deadline = time.monotonic() + 2 * STATUS_TTL_SECONDS
        while time.monotonic() < deadline and not self.stopping:
            status = self.status()
            if status == "unavailable":
                get_metrics().incr(MMDB_REFRESHED, 1, {"outcome": "unavailable"})
                return None
            if status == "fetching":
                # Another server downloads: wait until it is done, then read what it stored.
                while self.status() == "fetching" and not self.sleep(STATUS_POLL_SECONDS):
                    pass
                stored = load_stored()
                if stored is not None and not stored.stale(self._today()):
                    return stored
                continue
            if not self._claim_download():
                continue  # someone started a download between our read and our write
            return self._download()
        return None

    def _download(self) -> StoredDatabase | None:
        try:
            with requests.get(self.url, stream=True, timeout=DOWNLOAD_TIMEOUT, headers={"Accept-Encoding": "identity"}) as response:
                response.raise_for_status()
                # The body is the compressed file itself: read it undecoded, bounded.
                contents = response.raw.read(MAX_DOWNLOAD_BYTES + 1, decode_content=False)
                if len(contents) > MAX_DOWNLOAD_BYTES:
                    raise MMDBError(f"the GeoIP download is larger than {MAX_DOWNLOAD_BYTES} bytes")
                disposition = response.headers.get("content-disposition", "")
                content_type = response.headers.get("content-type", CONTENT_TYPE)
            match = _FILENAME.search(disposition)
            name = match[1] if match else f"GeoLite2-City-{self._today().isoformat()}.mmdb"
            file_name = name if name.endswith(".br") else f"{name}.br"
            reader = open_compressed(contents)
            store(file_name, content_type, contents)
            self._set_status("idle")
        except requests.RequestException as error:
            # The network said no (an offline laptop, a firewall, a 5xx): one line, not a traceback.
            logger.warning("mmdb: could not download the GeoIP database from %s: %s", self.url, error)
            self._set_status("unavailable", STATUS_TTL_SECONDS)
            get_metrics().incr(MMDB_REFRESHED, 1, {"outcome": "failed"})
            return None
        except Exception:  # noqa: BLE001 -- any failure: unavailable for a while, logged, never fatal
            logger.exception("mmdb: downloading the GeoIP database from %s failed", self.url)
            self._set_status("unavailable", STATUS_TTL_SECONDS)
            get_metrics().incr(MMDB_REFRESHED, 1, {"outcome": "failed"})
            return None
        logger.info("mmdb: downloaded the GeoIP database %s (%d bytes)", file_name, len(contents))
        get_metrics().incr(MMDB_REFRESHED, 1, {"outcome": "downloaded"})
        return StoredDatabase(reader, file_name, _built_on(file_name) if _DATE.search(file_name) else self._today())

    def _use(self, database: StoredDatabase) -> None:
        self.current = database
        self.locator.use(database.reader)

    # --- refreshing -------------------------------------------------------------------

    def refresh(self) -> bool:
        """Swap in a fresh database if the one in use is stale; True when it changed."""
        stored = _load_usable()
        if stored is not None and not stored.stale(self._today()):
            if self.current is None or stored.file_name != self.current.file_name:
                self._use(stored)  # another server stored a fresh copy
                return True
            return False
        fresh = self.fetch_shared()
        if fresh is None:
            return False
        self._use(fresh)
        return True

    def run(self) -> None:
        try:
            if self._refresh_soon:
                self._refresh_soon = False
                self.refresh()
            while not self.sleep(self.refresh_interval):
                self.refresh()
                close_old_connections()
        finally:
            connection.close()
