"""Settings from the environment: the original's names and defaults, one clear line per bad value."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from settings.env import env_bool, env_choice, env_float, env_int, env_url

ROOT = Path(__file__).resolve().parent.parent


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run manage.py in a clean environment plus ``env`` (settings.base, as in production)."""
    environ = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "settings.base", **env}
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WORKER_CONCURRENCY", "abc", "Configuration error: WORKER_CONCURRENCY='abc' is not valid: expected a whole number"),
        ("WEB_PORT", "80.5", "Configuration error: WEB_PORT='80.5' is not valid: expected a whole number"),
        ("TASK_TIMEOUT", "soon", "Configuration error: TASK_TIMEOUT='soon' is not valid: expected a number"),
        ("TASKS_PER_WORKER", "0", "Configuration error: TASKS_PER_WORKER='0' is not valid: expected a whole number >= 1"),
        (
            "DATABASE_URL",
            "not a url",
            "Configuration error: DATABASE_URL='not a url' is not valid: expected a URL like postgres://... or postgresql://...",
        ),
        (
            "REDIS_URL",
            "localhost:6379",
            "Configuration error: REDIS_URL='localhost:6379' is not valid: expected a URL like redis://... or rediss://... or unix://...",
        ),
        ("LOG_LEVEL", "loud", "Configuration error: LOG_LEVEL='loud' is not valid: expected one of debug, info, log, warn, error, none"),
    ],
)
def test_a_malformed_value_stops_start_up_with_one_line(variable: str, value: str, expected: str) -> None:
    """manage.py exits with status 2 and a single line naming the variable and the expected form, no traceback."""
    result = run_manage("check", **{variable: value})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [expected]
    assert result.stdout == ""


def test_a_rejected_url_does_not_echo_its_password() -> None:
    """A bad DATABASE_URL with credentials is reported without them."""
    result = run_manage("check", DATABASE_URL="mysql://admin:hunter2@db.internal/posthog")
    assert result.returncode == 2
    assert "hunter2" not in result.stderr
    assert result.stderr.startswith("Configuration error: DATABASE_URL='mysql://***@db.internal/posthog' is not valid")


def test_a_url_with_a_port_that_is_not_a_number_is_rejected() -> None:
    """DATABASE_URL with port 'abc' fails at start-up with the clear line, not later in the driver."""
    result = run_manage("check", DATABASE_URL="postgres://localhost:abc/posthog")
    assert result.returncode == 2
    assert "DATABASE_URL=" in result.stderr and "expected a URL like postgres://" in result.stderr


# The original's defaults (spec: plugins.md §15), outside the test environment.
V0_21_3_DEFAULTS = {
    # Deviation: the original's postgres://localhost:5432/posthog connected as the OS user.
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/posthog",
    "REDIS_URL": "redis://127.0.0.1",
    "REDIS_POOL_MIN_SIZE": 1,
    "REDIS_POOL_MAX_SIZE": 3,
    "CELERY_DEFAULT_QUEUE": "celery",
    "PLUGINS_CELERY_QUEUE": "posthog-plugins",
    "KAFKA_ENABLED": False,
    "KAFKA_HOSTS": None,
    "KAFKA_CLIENT_CERT_B64": None,
    "KAFKA_CLIENT_CERT_KEY_B64": None,
    "KAFKA_TRUSTED_CERT_B64": None,
    "KAFKA_CONSUMPTION_TOPIC": "events_plugin_ingestion",
    "KAFKA_CONSUMER_GROUP": "clickhouse-ingestion",
    "KAFKA_PRODUCER_MAX_QUEUE_SIZE": 1000,
    "KAFKA_MAX_MESSAGE_BATCH_SIZE": 900000,
    "KAFKA_FLUSH_FREQUENCY_MS": 500,
    "CLICKHOUSE_HOST": "localhost",
    "CLICKHOUSE_DATABASE": "default",
    "CLICKHOUSE_USER": "default",
    "CLICKHOUSE_PASSWORD": None,
    "CLICKHOUSE_CA": None,
    "CLICKHOUSE_SECURE": False,
    "BASE_DIR": ".",
    "PLUGINS_RELOAD_PUBSUB_CHANNEL": "reload-plugins",
    "DISABLE_WEB": True,
    "WEB_PORT": 3008,
    "WEB_HOSTNAME": "0.0.0.0",
    "WORKER_CONCURRENCY": os.cpu_count(),
    "TASKS_PER_WORKER": 10,
    "TASK_TIMEOUT": 30,
    "LOG_LEVEL": "info",
    "SENTRY_DSN": None,
    "STATSD_HOST": None,
    "STATSD_PORT": 8125,
    "STATSD_PREFIX": "plugin-server.",
    "SCHEDULE_LOCK_TTL": 60,
    "DISABLE_MMDB": False,
    "DISTINCT_ID_LRU_SIZE": 10000,
    "INTERNAL_MMDB_SERVER_PORT": 0,
    "PLUGIN_SERVER_IDLE": False,
    "JOB_QUEUES": ["graphile"],
    "JOB_QUEUE_GRAPHILE_URL": "",
    "JOB_QUEUE_GRAPHILE_SCHEMA": "graphile_worker",
    "JOB_QUEUE_GRAPHILE_PREPARED_STATEMENTS": False,
    "CRASH_IF_NO_PERSISTENT_JOB_QUEUE": False,
    "STALENESS_RESTART_SECONDS": 0,
}


def test_an_empty_environment_gives_the_original_defaults() -> None:
    """With no variable set, every setting of the original's table has its v0.21.3 default."""
    result = run_manage("print_config", "--json")
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert {name: effective.get(name, "<missing>") for name in V0_21_3_DEFAULTS} == V0_21_3_DEFAULTS


def test_posthog_db_and_redis_variables_win_over_the_urls() -> None:
    """POSTHOG_DB_NAME and POSTHOG_REDIS_HOST replace DATABASE_URL and REDIS_URL, as in the original."""
    result = run_manage(
        "print_config",
        "--json",
        POSTHOG_DB_NAME="ph",
        POSTHOG_DB_USER="ph_user",
        POSTHOG_POSTGRES_HOST="db.internal",
        POSTHOG_POSTGRES_PORT="6543",
        POSTHOG_REDIS_HOST="cache.internal",
        POSTHOG_REDIS_PORT="6380",
    )
    effective = json.loads(result.stdout)
    assert effective["DATABASE_URL"] == "postgres://ph_user@db.internal:6543/ph"
    assert effective["REDIS_URL"] == "redis://cache.internal:6380"


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("yes", True), ("TRUE", True), ("on", True), ("false", False), ("maybe", False), ("", True)]
)
def test_booleans_follow_the_original_rule(value: str, expected: bool) -> None:
    """True iff the value is one of y, yes, t, true, on, 1; empty keeps the default."""
    assert env_bool("FLAG", True, {"FLAG": value}) is expected


def test_numbers_parse_or_raise_naming_the_variable() -> None:
    """Whole numbers accept '3008' and '3008.0'; numbers accept fractions; garbage names the variable."""
    assert env_int("PORT", 1, {"PORT": "3008"}) == 3008
    assert env_int("PORT", 1, {"PORT": "3008.0"}) == 3008
    assert env_int("PORT", 1, {}) == 1
    assert env_float("TIMEOUT", 30.0, {"TIMEOUT": "7.5"}) == 7.5
    with pytest.raises(ImproperlyConfigured, match=r"^PORT='x' is not valid"):
        env_int("PORT", 1, {"PORT": "x"})
    with pytest.raises(ImproperlyConfigured, match=r"^TIMEOUT='-1' is not valid: expected a number >= 0"):
        env_float("TIMEOUT", 30.0, {"TIMEOUT": "-1"})


def test_urls_and_choices_are_checked() -> None:
    """A URL needs one of the schemes and a host; a choice one of the values (any case)."""
    assert env_url("U", "redis://x", ("redis",), {"U": "redis://:pw@h:6379/1"}) == "redis://:pw@h:6379/1"
    with pytest.raises(ImproperlyConfigured, match="expected a URL like redis://"):
        env_url("U", "redis://x", ("redis",), {"U": "http://h"})
    assert env_choice("C", "info", ("info", "warn"), {"C": "WARN"}) == "warn"


def _variables_read_by_settings() -> set[str]:
    # The project's settings and the app's own (plugin_server.app_settings).
    source = (ROOT / "settings" / "base.py").read_text() + (ROOT / "plugin_server" / "app_settings.py").read_text()
    return set(re.findall(r'env_\w+\(\s*"([A-Z0-9_]+)"', source)) | set(re.findall(r'os\.environ\.get\(\s*"([A-Z0-9_]+)"', source))


def test_every_setting_is_in_the_configuration_table() -> None:
    """docs/configuration.md has a row for each variable the settings read, and no row for one they do not."""
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", (ROOT / "docs" / "configuration.md").read_text(), re.MULTILINE))
    read = _variables_read_by_settings()
    assert read - documented == set(), "add a row for each of these to docs/configuration.md"
    assert documented - read == set(), "these rows of docs/configuration.md name no setting"


# Read by settings/base.py but folded into a resolved value of the config view
# (DATABASE_URL, REDIS_URL) or only switching the test defaults.
FOLDED = {"POSTHOG_DB_NAME", "POSTHOG_DB_USER", "POSTHOG_DB_PASSWORD", "POSTHOG_POSTGRES_HOST", "POSTHOG_POSTGRES_PORT",
          "POSTHOG_REDIS_HOST", "POSTHOG_REDIS_PORT", "POSTHOG_REDIS_PASSWORD", "DYNO", "PLUGIN_SERVER_TESTING"}


def test_every_setting_is_in_the_config_view() -> None:
    """plugin_server.config.ServerConfig (and so print_config) has a field for each setting read from the environment."""
    from plugin_server.config import ServerConfig

    fields = {field.name.upper() for field in dataclasses.fields(ServerConfig)}
    assert _variables_read_by_settings() - FOLDED - fields == set(), "add a field to ServerConfig in plugin_server/config.py"


def test_the_development_secret_key_is_flagged_by_the_deploy_check() -> None:
    """Without SECRET_KEY, `check --deploy` warns (security.W009); with a strong key it does not."""
    assert "security.W009" in run_manage("check", "--deploy").stderr
    strong = run_manage("check", "--deploy", SECRET_KEY=STRONG_KEY)
    assert "security.W009" not in strong.stderr


# What README.md tells an operator to set for production (it shows these names and values).
PRODUCTION_SETTINGS = {
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
}
STRONG_KEY = "k" + "".join(chr(ord("a") + i % 26) + str(i) for i in range(40))


def test_the_development_secret_key_with_debug_off_warns_at_every_start() -> None:
    """Any command (here `check`) warns plugin_server.W001 with the built-in key; not with a key of one's own, nor with DEBUG on."""
    warned = run_manage("check")
    assert warned.returncode == 0
    assert "(plugin_server.W001) SECRET_KEY is the built-in development key, and DEBUG is off" in warned.stderr
    assert "plugin_server.W001" not in run_manage("check", SECRET_KEY=STRONG_KEY).stderr
    assert "plugin_server.W001" not in run_manage("check", DEBUG="true").stderr


def test_check_deploy_is_clean_with_what_the_readme_says_to_set() -> None:
    """`manage.py check --deploy` finds no issue with a real SECRET_KEY and the README's HTTPS settings."""
    readme = (ROOT / "README.md").read_text()
    for name, value in PRODUCTION_SETTINGS.items():
        assert f"{name}={value}" in readme, f"README.md should tell to set {name}={value}"
    assert "SECRET_KEY=" in readme
    result = run_manage("check", "--deploy", SECRET_KEY=STRONG_KEY, **PRODUCTION_SETTINGS)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."
