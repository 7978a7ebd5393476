"""The typed config view (plugin_server.config) and ./manage.py print_config with secrets masked."""

from __future__ import annotations

import dataclasses
import json
import os
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import override_settings

from plugin_server.config import MASK, ServerConfig, get_config, mask_url

SECRETS = {
    "SECRET_KEY": "django-secret-value",
    "SENTRY_DSN": "https://publickey123@o1.ingest.sentry.io/42",
    "CLICKHOUSE_PASSWORD": "clickhouse-secret",
    "KAFKA_CLIENT_CERT_B64": "Y2VydC1zZWNyZXQ=",
    "KAFKA_CLIENT_CERT_KEY_B64": "a2V5LXNlY3JldA==",
    "KAFKA_TRUSTED_CERT_B64": "Y2Etc2VjcmV0",
    "REDIS_URL": "redis://:redis-secret@127.0.0.1:6379/1",
    "JOB_QUEUE_GRAPHILE_URL": "postgres://jobs:graphile-secret@db.internal:5432/jobs",
}


def print_config(*args: str) -> str:
    out = StringIO()
    call_command("print_config", *args, stdout=out)
    return out.getvalue()


@override_settings(**SECRETS)
def test_print_config_masks_every_secret() -> None:
    """Passwords in URLs, SECRET_KEY, SENTRY_DSN, CLICKHOUSE_PASSWORD and KAFKA_*_B64 never appear in the output."""
    for output in (print_config(), print_config("--json")):
        for secret in ("django-secret-value", "publickey123", "clickhouse-secret", "Y2VydC1zZWNyZXQ=", "a2V5LXNlY3JldA==", "Y2Etc2VjcmV0", "redis-secret", "graphile-secret"):
            assert secret not in output
    lines = print_config().splitlines()
    assert f"SECRET_KEY={MASK}" in lines
    assert f"SENTRY_DSN={MASK}" in lines
    assert f"REDIS_URL=redis://:{MASK}@127.0.0.1:6379/1" in lines
    assert f"JOB_QUEUE_GRAPHILE_URL=postgres://jobs:{MASK}@db.internal:5432/jobs" in lines


@override_settings(CLICKHOUSE_PASSWORD=None, SENTRY_DSN=None, KAFKA_HOSTS="k1:9092,k2:9092", WORKER_CONCURRENCY=3, JOB_QUEUES="graphile, fs")
def test_print_config_prints_values_in_environment_form() -> None:
    """One NAME=value line per setting: unset is empty, booleans true/false, lists comma-joined."""
    lines = print_config().splitlines()
    assert "CLICKHOUSE_PASSWORD=" in lines  # unset is not masked: an operator must see it is missing
    assert "SENTRY_DSN=" in lines
    assert "KAFKA_HOSTS=k1:9092,k2:9092" in lines
    assert "KAFKA_ENABLED=false" in lines
    assert "WORKER_CONCURRENCY=3" in lines
    assert "JOB_QUEUES=graphile,fs" in lines
    assert len(lines) == len(dataclasses.fields(ServerConfig))


def test_print_config_json_has_typed_values() -> None:
    """--json prints one object whose numbers and booleans keep their types."""
    effective = json.loads(print_config("--json"))
    assert effective["WEB_PORT"] == 3008
    assert effective["DISABLE_MMDB"] is True  # the test default
    assert effective["PLUGINS_RELOAD_PUBSUB_CHANNEL"] == "reload-plugins"


def test_config_is_built_once_and_dropped_on_setting_changed() -> None:
    """get_config() returns the same frozen object until a setting changes; override_settings is seen."""
    first = get_config()
    assert get_config() is first
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.task_timeout = 1.0  # type: ignore[misc]
    with override_settings(TASK_TIMEOUT=2.5, PLUGINS_RELOAD_PUBSUB_CHANNEL="other-channel"):
        changed = get_config()
        assert changed is not first
        assert (changed.task_timeout, changed.plugins_reload_pubsub_channel) == (2.5, "other-channel")
    assert get_config().task_timeout == first.task_timeout


@override_settings(WORKER_CONCURRENCY=0)
def test_zero_worker_concurrency_means_one_per_core() -> None:
    """WORKER_CONCURRENCY=0 resolves to the number of CPU cores."""
    assert get_config().worker_concurrency == (os.cpu_count() or 1)


@override_settings(SECRET_KEY="repr-secret", REDIS_URL="redis://:repr-redis-pw@localhost:6379")
def test_repr_of_the_config_is_masked() -> None:
    """Logging the config object cannot leak a secret."""
    text = repr(get_config())
    assert "repr-secret" not in text and "repr-redis-pw" not in text
    assert "task_timeout=" in text


def test_mask_url_replaces_only_the_password() -> None:
    """User, host, port, path and query survive; an IPv6 host keeps its brackets; no password, no change."""
    assert mask_url("postgres://u:p%40ss@h:5432/db?sslmode=require") == f"postgres://u:{MASK}@h:5432/db?sslmode=require"
    assert mask_url("redis://:pw@[::1]:6379/2") == f"redis://:{MASK}@[::1]:6379/2"
    assert mask_url("redis://localhost:6379") == "redis://localhost:6379"
