"""The declared dependency ranges (pyproject.toml) fit today's PostHog and the pins CI runs."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent

# What today's PostHog pins (its pyproject.toml) for the packages the app shares with it.
POSTHOG_PINS = {
    "django": "5.2.8",
    "psycopg": "3.2.4",
    "redis": "5.3.1",
    "kombu": "5.6.2",
    "celery": "5.6.3",
    "geoip2": "4.6.0",
    "brotli": "1.2.0",
    "confluent-kafka": "2.13.2",
    "clickhouse-driver": "0.2.10",
    "protobuf": "5.29.6",
    "requests": "2.33.0",
    "orjson": "3.11.9",
    "lzstring": "1.0.4",
    "dj-database-url": "3.0.0",
}
# The floors the app promises (issue: Django 5.2, Celery/kombu 5.3+, redis-py 4.5+, psycopg 3.2+).
FLOORS = {"django": "5.2", "celery": "5.3.0", "kombu": "5.3.0", "redis": "4.5.0", "psycopg": "3.2.0"}


def _declared() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    requirements += [Requirement(line) for group in project["optional-dependencies"].values() for line in group]
    return {canonicalize_name(requirement.name): requirement for requirement in requirements}


def _pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"requirements.txt pins exactly: {line}"
            pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def test_every_runtime_pin_has_a_declared_range_that_holds_it() -> None:
    declared, pinned = _declared(), _pinned()
    assert pinned.keys() == declared.keys(), "requirements.txt and pyproject.toml name the same packages"
    for name, version in pinned.items():
        assert declared[name].specifier.contains(version, prereleases=True), f"{name}=={version} is outside {declared[name]}"


@pytest.mark.parametrize(("name", "version"), sorted(POSTHOG_PINS.items()))
def test_todays_posthog_satisfies_the_ranges(name: str, version: str) -> None:
    assert _declared()[name].specifier.contains(version), f"PostHog's {name}=={version} is outside {_declared()[name]}"


@pytest.mark.parametrize(("name", "floor"), sorted(FLOORS.items()))
def test_the_promised_floors_are_admitted(name: str, floor: str) -> None:
    assert _declared()[name].specifier.contains(floor)


def test_the_python_versions() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for version in ("3.11.7", "3.13.13"):  # what CI runs, what today's PostHog runs
        assert Requirement(f"python{project['requires-python']}").specifier.contains(version)
