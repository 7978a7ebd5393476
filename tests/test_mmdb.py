"""The GeoIP (MMDB) service against real Postgres, Redis and a local HTTP download server."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from django.test import override_settings

from plugin_server.exceptions import MetaCallError
from plugin_server.mmdb import ATTACHMENT_KEY, STATUS_KEY, MMDBService, store
from plugin_server.models import PluginAttachment
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.geoip import NOT_AVAILABLE, GeoIPLocator

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

COMPRESSED = (Path(__file__).resolve().parent / "data" / "GeoLite2-City-Test.mmdb.br").read_bytes()
CTX = PluginContext(plugin_config_id=39, plugin_id=60, team_id=2, plugin_name="test-maxmind-plugin")
TODAY = date(2021, 5, 20)


class Download:
    """A local stand-in for the MMDB download URL: serves the Brotli file, counts requests."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.requests = 0
        self.status = status
        self.delay = delay
        download = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- the stdlib's name
                download.requests += 1
                time.sleep(download.delay)
                self.send_response(download.status)
                self.send_header("Content-Type", "vnd.maxmind.maxmind-db")
                self.send_header("Content-Disposition", 'attachment; filename="GeoLite2-City-2021-05-18.mmdb"')
                self.send_header("Content-Length", str(len(COMPRESSED)))
                self.end_headers()
                self.wfile.write(COMPRESSED)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the stdlib's name
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"


@pytest.fixture
def download() -> Iterator[Download]:
    server = Download()
    thread = threading.Thread(target=server.httpd.serve_forever, daemon=True)
    thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture(autouse=True)
def mmdb_on(redis_client: redis.Redis) -> Iterator[None]:
    redis_client.delete(STATUS_KEY)
    with override_settings(DISABLE_MMDB=False, MMDB_PATH=""):
        yield
    redis_client.delete(STATUS_KEY)


def service(url: str, locator: GeoIPLocator | None = None) -> MMDBService:
    return MMDBService(locator or GeoIPLocator(), url, refresh_interval=3600, today=lambda: TODAY)


def city(locator: GeoIPLocator, ip: str = "89.160.20.129") -> str | None:
    record = locator.locate(CTX, ip)
    return record["city"]["names"]["en"] if record else None


def seed(file_name: str = "GeoLite2-City-2021-05-01.mmdb.br") -> None:
    store(file_name, "vnd.maxmind.maxmind-db", COMPRESSED)


def test_a_stored_fresh_database_is_used_without_a_download(download: Download, redis_client: redis.Redis) -> None:
    seed()
    locator = GeoIPLocator()
    service(download.url, locator).prepare()
    assert city(locator) == "Linköping"
    assert city(locator, "216.160.83.56") == "Milton"
    assert locator.locate(CTX, "127.0.0.1") is None and locator.locate(CTX, "asdfgh") is None
    assert download.requests == 0 and redis_client.get(STATUS_KEY) is None


def test_no_database_downloads_once_and_stores_it_for_every_server(download: Download, redis_client: redis.Redis) -> None:
    first = GeoIPLocator()
    service(download.url, first).prepare()
    assert city(first) == "Linköping"
    row = PluginAttachment.objects.get(key=ATTACHMENT_KEY)
    assert row.file_name == "GeoLite2-City-2021-05-18.mmdb.br"
    assert bytes(row.contents) == COMPRESSED and row.file_size == len(COMPRESSED)
    assert row.content_type == "vnd.maxmind.maxmind-db" and row.team_id is None and row.plugin_config_id is None
    assert json.loads(redis_client.get(STATUS_KEY)) == "idle"
    # Another server finds the stored row: no second download.
    second = GeoIPLocator()
    service(download.url, second).prepare()
    assert city(second) == "Linköping" and download.requests == 1


def test_a_server_waits_for_another_ones_download(download: Download, redis_client: redis.Redis) -> None:
    """Status "fetching": poll until it changes, then read the row the other server stored."""
    redis_client.set(STATUS_KEY, json.dumps("fetching"), ex=120)

    def other_server_finishes() -> None:
        time.sleep(0.5)
        seed("GeoLite2-City-2021-05-15.mmdb.br")
        redis_client.set(STATUS_KEY, json.dumps("idle"))

    finisher = threading.Thread(target=other_server_finishes)
    finisher.start()
    locator = GeoIPLocator()
    mmdb = service(download.url, locator)
    mmdb.prepare()
    finisher.join()
    assert city(locator) == "Linköping" and download.requests == 0
    assert mmdb.current is not None and mmdb.current.file_name == "GeoLite2-City-2021-05-15.mmdb.br"


def test_a_failed_download_makes_geoip_unavailable_for_a_while(
    download: Download, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A 500 (or no network at all) leaves meta.geoip unavailable, said in one warning line without a traceback."""
    download.status = 500
    locator = GeoIPLocator()
    with caplog.at_level(logging.WARNING, logger="plugin_server.mmdb"):
        service(download.url, locator).prepare()
    failed = [record for record in caplog.records if "could not download the GeoIP database" in record.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is None and "500 Server Error" in failed[0].getMessage()
    with pytest.raises(MetaCallError, match=NOT_AVAILABLE):
        locator.locate(CTX, "89.160.20.129")
    assert json.loads(redis_client.get(STATUS_KEY)) == "unavailable"
    assert 0 < redis_client.ttl(STATUS_KEY) <= 120
    # While unavailable, other servers do not try again.
    service(download.url).prepare()
    assert download.requests == 1 and not PluginAttachment.objects.filter(key=ATTACHMENT_KEY).exists()


def test_a_stale_database_is_used_at_once_and_refreshed_in_the_background(download: Download) -> None:
    """Older than 45 days: lookups go on from the old copy while the new one downloads, then it is swapped in."""
    seed((TODAY - timedelta(days=60)).strftime("GeoLite2-City-%Y-%m-%d.mmdb.br"))
    download.delay = 0.5
    locator = GeoIPLocator()
    mmdb = service(download.url, locator)
    mmdb.start()
    try:
        answers = []
        deadline = time.monotonic() + 20
        while (mmdb.current is None or mmdb.current.file_name != "GeoLite2-City-2021-05-18.mmdb.br") and time.monotonic() < deadline:
            answers.append(city(locator))  # never interrupted
            time.sleep(0.01)
        assert mmdb.current is not None and mmdb.current.file_name == "GeoLite2-City-2021-05-18.mmdb.br"
        assert len(answers) > 10 and set(answers) == {"Linköping"}
        assert city(locator) == "Linköping"
        assert list(PluginAttachment.objects.filter(key=ATTACHMENT_KEY).values_list("file_name", flat=True)) == [
            "GeoLite2-City-2021-05-18.mmdb.br"
        ]
        assert download.requests == 1
    finally:
        mmdb.stop()


def test_a_stored_row_without_a_date_is_replaced_by_a_download(download: Download) -> None:
    seed("GeoLite2-City.mmdb.br")
    locator = GeoIPLocator()
    service(download.url, locator).prepare()
    assert city(locator) == "Linköping" and download.requests == 1


@pytest.mark.slow
def test_the_server_gives_plugins_the_service_database_and_honours_the_switches(download: Download) -> None:
    """Through the sandbox: meta.geoip.locate answers from the attachment; DISABLE_MMDB and MMDB_PATH win."""
    from plugin_server.server import Server, ServerOptions
    from plugin_server.workers.pool import PoolSettings, WorkerPool
    from tests.workers.helpers import install

    seed((date.today() - timedelta(days=1)).strftime("GeoLite2-City-%Y-%m-%d.mmdb.br"))
    config = install("def run_every_minute(meta):\n    return meta.geoip.locate('89.160.20.129')['city']['names']['en']\n")
    options = ServerOptions(kafka_enabled=False, disable_web=True, web_hostname="", web_port=0, shutdown_timeout=30,
                            job_queues="", mode="jobs")
    operator_file = str(Path(__file__).resolve().parent / "data" / "GeoLite2-City-Test.mmdb")
    cases = (({}, "Linköping", True), ({"DISABLE_MMDB": True}, None, False), ({"MMDB_PATH": operator_file}, "Linköping", False))
    for switches, expected, service_runs in cases:
        with override_settings(MMDB_DOWNLOAD_URL=download.url, **switches):
            server = Server(options, pool_factory=lambda: WorkerPool(PoolSettings.from_config(concurrency=1)))
            server.start()
            try:
                assert (server.services.get("mmdb") is not None) == service_runs
                assert server.pool is not None
                assert server.pool.run_scheduled(config.id, "runEveryMinute") == expected  # type: ignore[func-returns-value]
            finally:
                server.shutdown()
    assert download.requests == 0
