"""MetaHost: the allow-list, argument checks and dispatch of meta calls."""

from __future__ import annotations

import pytest

from plugin_server.exceptions import MetaCallError
from plugin_server.models import PluginLogEntry, PluginStorage
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.host import ALLOWED_CALLS, MetaHost

pytestmark = [pytest.mark.django_db, pytest.mark.redis]


@pytest.mark.parametrize(
    ("api", "method"),
    [
        ("cache", "flushdb"),
        ("cache", "client"),
        ("cache", "_client"),
        ("storage", "__init__"),
        ("os", "system"),
        ("logger", "_writer"),
        ("", ""),
    ],
)
def test_refuses_calls_outside_the_allow_list(ctx: PluginContext, host: MetaHost, api: str, method: str) -> None:
    """It refuses any (api, method) not in ALLOWED_CALLS, naming it."""
    with pytest.raises(MetaCallError, match="is not available to plugins"):
        host.call(ctx, api, method, [], {})


def test_every_allowed_call_exists(host: MetaHost) -> None:
    """It has a handler for every allowed call (the allow-list names nothing missing)."""
    for api, methods in ALLOWED_CALLS.items():
        for method in methods:
            assert callable(getattr(host._apis[api], method))


def test_cache_and_storage_round_trip(ctx: PluginContext, host: MetaHost) -> None:
    """It dispatches cache and storage calls with positional and keyword arguments."""
    host.call(ctx, "cache", "set", ["counter", 0], {"ttl_seconds": 60})
    assert host.call(ctx, "cache", "incr", ["counter"], {}) == 1
    assert host.call(ctx, "cache", "get", ["missing"], {"default": 999}) == 999
    host.call(ctx, "storage", "set", ["k", {"v": 1}], {})
    assert host.call(ctx, "storage", "get", ["k"], {}) == {"v": 1}
    assert PluginStorage.objects.filter(plugin_config_id=ctx.plugin_config_id).count() == 1


@pytest.mark.parametrize(
    ("api", "method", "args", "kwargs", "message"),
    [
        ("cache", "get", [], {}, r"meta.cache.get\(\): missing a required argument: 'key'"),
        ("cache", "set", ["k", 1, 2, 3, 4], {}, "too many positional arguments"),
        ("storage", "get", ["k"], {"nope": 1}, "unexpected keyword argument 'nope'"),
        ("cache", "get", ["k"], {"ctx": 1}, "multiple values for argument 'ctx'"),
    ],
)
def test_bad_arguments_are_a_clear_error(ctx: PluginContext, host: MetaHost, api, method, args, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    """It refuses wrong arguments with the method's name before running anything."""
    with pytest.raises(MetaCallError, match=message):
        host.call(ctx, api, method, args, kwargs)


@pytest.mark.parametrize(("method", "entry_type"), [("debug", "DEBUG"), ("log", "LOG"), ("info", "INFO"), ("warn", "WARN"), ("warning", "WARN"), ("error", "ERROR")])
def test_logger_levels(ctx: PluginContext, host: MetaHost, method: str, entry_type: str) -> None:
    """It writes logger calls as CONSOLE entries of the matching type, once flushed."""
    host.call(ctx, "logger", method, ["number =", 987], {})
    assert not PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id).exists()
    host.flush()
    entry = PluginLogEntry.objects.get(plugin_config_id=ctx.plugin_config_id)
    assert (entry.source, entry.type, entry.message) == ("CONSOLE", entry_type, "number = 987")


def test_logger_empty_entry(ctx: PluginContext, host: MetaHost) -> None:
    """It writes an entry with an empty message for a call without arguments."""
    host.call(ctx, "logger", "log", [], {})
    host.close()
    assert PluginLogEntry.objects.get(plugin_config_id=ctx.plugin_config_id).message == ""


def test_system_entries(ctx: PluginContext, host: MetaHost) -> None:
    """It buffers SYSTEM entries for the pool's load/unload lines."""
    host.write_log(ctx, "SYSTEM", "INFO", "Plugin loaded (instance ID x).")
    host.flush()
    assert PluginLogEntry.objects.get(plugin_config_id=ctx.plugin_config_id).source == "SYSTEM"


def test_service_failure_becomes_meta_error(ctx: PluginContext, host: MetaHost) -> None:
    """It turns a Redis error into a MetaCallError naming the call (here: a list op on a missing-type key)."""
    import redis

    from plugin_server.plugins.meta.cache import PluginCache

    broken = MetaHost(cache=PluginCache(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)))
    with pytest.raises(MetaCallError, match=r"meta.cache.get failed: ConnectionError"):
        broken.call(ctx, "cache", "get", ["k"], {})


def test_geoip_through_the_host(ctx: PluginContext, host: MetaHost) -> None:
    """It serves meta.geoip.locate, and the 'not available' error when GeoIP is disabled."""
    from pathlib import Path

    from django.test import override_settings

    mmdb = Path(__file__).resolve().parents[2] / "data" / "GeoLite2-City-Test.mmdb"
    with override_settings(DISABLE_MMDB=False, MMDB_PATH=str(mmdb)):
        assert host.call(ctx, "geoip", "locate", ["89.160.20.129"], {})["city"]["names"]["en"] == "Linköping"
        assert host.call(ctx, "geoip", "locate", ["asdfgh"], {}) is None
    with override_settings(DISABLE_MMDB=True):
        with pytest.raises(MetaCallError, match="IP location capabilities are not available in this PostHog instance!"):
            host.call(ctx, "geoip", "locate", ["89.160.20.129"], {})


def test_capture_through_the_host(ctx: PluginContext, host: MetaHost, unique_name: str, redis_client) -> None:  # type: ignore[no-untyped-def]
    """It serves posthog.capture: one task lands on the plugins queue."""
    from django.test import override_settings

    with override_settings(PLUGINS_CELERY_QUEUE=unique_name):
        host.call(ctx, "posthog", "capture", ["my-new-event"], {"properties": {"random": "properties"}})
    try:
        assert redis_client.llen(unique_name) == 1
    finally:
        redis_client.delete(unique_name)


def test_fetch_refusal_through_the_host(ctx: PluginContext, host: MetaHost) -> None:
    """It serves meta.fetch with the settings' limits: a loopback address is refused by default."""
    with pytest.raises(MetaCallError, match="is not a public address"):
        host.call(ctx, "fetch", "fetch", ["http://127.0.0.1:9/"], {})


def test_refused_deferred_call_goes_to_the_plugin_log(ctx: PluginContext, host: MetaHost, unique_name: str, redis_client) -> None:  # type: ignore[no-untyped-def]
    """It writes a refused fire-and-forget capture to the plugin's log instead of raising, and queues nothing."""
    from django.test import override_settings

    with override_settings(PLUGINS_CELERY_QUEUE=unique_name):
        host.call_deferred(ctx, "posthog", "capture", [""], {})
        host.call_deferred(ctx, "posthog", "capture", ["fine"], {})
    try:
        assert redis_client.llen(unique_name) == 1
    finally:
        redis_client.delete(unique_name)
    host.flush()
    entry = PluginLogEntry.objects.get(plugin_config_id=ctx.plugin_config_id)
    assert (entry.source, entry.type) == ("PLUGIN", "ERROR")
    assert entry.message.startswith("posthog.capture: the event name must be a string")
