"""meta.geoip against MaxMind's public test database (tests/data, copied from the spec's data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import override_settings

from plugin_server.exceptions import MetaCallError
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.geoip import NOT_AVAILABLE, GeoIPLocator, reader_from_bytes

CTX = PluginContext(plugin_config_id=39, plugin_id=60, team_id=2, plugin_name="test-maxmind-plugin")
TEST_MMDB = Path(__file__).resolve().parents[2] / "data" / "GeoLite2-City-Test.mmdb"


@pytest.fixture
def locator() -> GeoIPLocator:
    with override_settings(DISABLE_MMDB=False, MMDB_PATH=str(TEST_MMDB)):
        yield GeoIPLocator()


def test_locate_linkoping(locator: GeoIPLocator) -> None:
    """It answers 89.160.20.129 with Linköping, Sweden, and MaxMind's snake_case record."""
    with override_settings(DISABLE_MMDB=False, MMDB_PATH=str(TEST_MMDB)):
        record = locator.locate(CTX, "89.160.20.129")
    assert record is not None
    assert record["city"]["names"]["en"] == "Linköping"
    assert record["country"]["iso_code"] == "SE"
    assert record["continent"]["code"] == "EU"
    assert record["registered_country"]["iso_code"] == "DE"
    assert record["subdivisions"][0]["iso_code"] == "E"
    assert record["location"] == {"accuracy_radius": 76, "latitude": 58.4167, "longitude": 15.6167, "time_zone": "Europe/Stockholm"}
    assert record["traits"] == {"ip_address": "89.160.20.129", "network": "89.160.20.128/25"}


@pytest.mark.parametrize(
    ("ip", "city", "country"),
    [
        ("81.2.69.142", "London", "GB"),
        ("2.125.160.216", "Boxford", "GB"),
        ("216.160.83.56", "Milton", "US"),
        ("175.16.199.0", "Changchun", "CN"),
        ("67.43.156.0", None, "BT"),
        ("2001:218::", None, "JP"),
        ("2a02:cf40::", None, "NO"),
    ],
)
def test_locate_table(locator: GeoIPLocator, ip: str, city: str | None, country: str) -> None:
    """It answers the test database's addresses (IPv4 and IPv6) as the spec's table says."""
    record = locator.locate(CTX, ip)
    assert record is not None
    assert record["country"]["iso_code"] == country
    assert record.get("city", {}).get("names", {}).get("en") == city


@pytest.mark.parametrize("ip", ["127.0.0.1", "1.1.1.1", "asdfgh", "", "999.1.1.1", 12345, None])
def test_unknown_or_invalid_is_none(locator: GeoIPLocator, ip: object) -> None:
    """It returns None for an address not in the database and for anything that is not an address."""
    assert locator.locate(CTX, ip) is None


def test_disabled_is_the_original_error() -> None:
    """It raises the original's 'not available' error when DISABLE_MMDB is set, even with a database."""
    with override_settings(DISABLE_MMDB=True, MMDB_PATH=str(TEST_MMDB)):
        with pytest.raises(MetaCallError, match=NOT_AVAILABLE):
            GeoIPLocator().locate(CTX, "89.160.20.129")


@pytest.mark.parametrize("path", ["", "/nonexistent/GeoLite2-City.mmdb", __file__])
def test_no_database_is_the_original_error(path: str) -> None:
    """It raises 'not available' with no database, a missing file or a file that is not an MMDB."""
    with override_settings(DISABLE_MMDB=False, MMDB_PATH=path):
        locator = GeoIPLocator()
        for _ in range(2):
            with pytest.raises(MetaCallError, match=NOT_AVAILABLE):
                locator.locate(CTX, "89.160.20.129")


def test_reader_swapped_in_from_bytes() -> None:
    """It serves from a reader opened on in-memory bytes (the attachment path) once swapped in."""
    with override_settings(DISABLE_MMDB=False, MMDB_PATH=""):
        locator = GeoIPLocator()
        with pytest.raises(MetaCallError):
            locator.locate(CTX, "89.160.20.129")
        locator.use(reader_from_bytes(TEST_MMDB.read_bytes()))
        assert locator.locate(CTX, "89.160.20.129")["city"]["names"]["en"] == "Linköping"
        locator.use(None)
        with pytest.raises(MetaCallError, match=NOT_AVAILABLE):
            locator.locate(CTX, "89.160.20.129")
