"""The meta API as a JavaScript plugin uses it: code in a V8 isolate of a team worker, every meta
call a request over the worker's pipe to the same MetaHost as Python plugins."""

from __future__ import annotations

import json

import pytest
import redis
from django.test import override_settings
from django_q.models import Schedule

from plugin_server.models import PluginStorage
from tests.factories import create_attachment
from tests.plugins.meta.test_through_workers import host, run, server  # noqa: F401 — the fixtures
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.redis]


def install_js(source: str, filename: str = "index.js", **fields: object):  # type: ignore[no-untyped-def]
    return install(json.dumps({filename: source}), **fields)  # type: ignore[arg-type]


def test_storage_cache_global_config_and_attachments(run, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """A JS plugin reads config and attachments, keeps meta.global, counts in meta.cache and stores in meta.storage."""
    config = install_js(
        """
        async function setupPlugin({ global, cache }) {
            global.seen = 0
            await cache.set('counter', 0)
        }
        async function processEvent(event, { config, attachments, global, cache, storage }) {
            global.seen += 1
            await storage.set('last', event.event)
            const counter = await cache.get('counter', 999)
            await cache.set('counter', counter + 1)
            event.properties = {
                ...event.properties,
                config,
                file: attachments.maxmindMmdb.contents.toString(),
                stored: await storage.get('last'),
                missing: await storage.get('nope', 'dflt'),
                seen: global.seen,
                counter: await cache.incr('counter'),
            }
            await storage.set('gone', 1)
            await storage.set('gone', undefined)
            return event
        }
        """,
        plugin_fields={"config_schema": {"greeting": {"default": "hi"}}},
        config={"localhostIP": "94.224.212.175"},
    )
    create_attachment(config, "maxmindMmdb", b"test", file_name="test.txt")
    first, second = run([event(config.team_id, n=7), event(config.team_id, n=8)])
    assert first["properties"]["config"] == {"localhostIP": "94.224.212.175", "greeting": "hi"}
    assert first["properties"]["file"] == "test"
    assert (second["properties"]["stored"], second["properties"]["missing"]) == ("e8", "dflt")
    assert (first["properties"]["seen"], second["properties"]["seen"]) == (1, 2)
    assert (first["properties"]["counter"], second["properties"]["counter"]) == (2, 4)
    assert PluginStorage.objects.get(plugin_config_id=config.id, key="last").value == '"e8"'
    assert not PluginStorage.objects.filter(plugin_config_id=config.id, key="gone").exists()


def test_fetch_geoip_jobs_and_capture_as_a_global(run, server: str, unique_name: str, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    """fetch (and node-fetch) against a local server, geoip, meta.jobs.x(payload).runIn(...) and posthog.capture as a global."""
    config = install_js(
        f"""
        import fetchAgain from 'node-fetch'
        export async function processEvent(event, meta) {{
            const response = await fetch('{server}/results.json?query=fetched')
            event.properties.fetched = await response.json()
            event.properties.status = response.status
            event.properties.type = response.headers.get('Content-Type')
            event.properties.again = (await (await fetchAgain('{server}/x')).json()).count
            event.properties.city = (await meta.geoip.locate('89.160.20.129')).city.names.en
            await meta.jobs.reply({{ text: 'hi' }}).runIn(30, 'seconds')
            posthog.capture('my-new-event', {{ random: 'properties' }})
            return event
        }}
        """
    )
    with override_settings(PLUGINS_CELERY_QUEUE=unique_name, DISABLE_MMDB=False):
        (out,) = run([event(config.team_id)])
    captured = redis_client.llen(unique_name)
    redis_client.delete(unique_name)
    properties = out["properties"]
    assert properties["fetched"] == {"count": 2, "query": "bla", "results": [True, True]}
    assert (properties["status"], properties["type"], properties["again"]) == (200, "application/json", 2)
    assert (properties["city"], properties["$plugins_failed"], captured) == ("Linköping", [], 1)
    (job,) = Schedule.objects.all()
    assert all(part in job.args for part in ('"type":"reply"', f'"pluginConfigId":{config.id}', '"text":"hi"'))


def test_refused_meta_call_rejects_the_promise(run) -> None:  # type: ignore[no-untyped-def]
    """A meta call the host refuses rejects inside the plugin, which may catch it and go on."""
    config = install_js(
        """
        exports.processEvent = async (event, meta) => {
            try {
                await fetch('http://127.0.0.1:1/nowhere')
            } catch (error) {
                event.properties.refused = String(error.message).length > 0
            }
            return event
        }
        """
    )
    (out,) = run([event(config.team_id)])
    assert out["properties"]["refused"] is True and out["properties"]["$plugins_failed"] == []
