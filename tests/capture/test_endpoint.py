"""The capture endpoints through Django's test client, onto the real Redis queue.

Every accepted event is read back off the queue with the ingestion
consumer's own decoder: what capture queues is what the server ingests.
"""

from __future__ import annotations

import base64
import gzip
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from django.test import Client, override_settings
from lzstring import LZString

from plugin_server.models import Team
from tests.capture.conftest import OwnRedis, queued_events
from tests.factories import create_team
from tests.ingestion.celery_tasks import celery_app, send_event_task, task_args

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

TOKEN = "phc_capture_test_token"


def post_json(client: Client, path: str, body: Any, **extra: Any) -> Any:
    return client.post(path, data=json.dumps(body), content_type="application/json", **extra)


def test_a_json_event_is_queued_as_posthogs_celery_task(client: Client, team: Team, queue: str, redis_client: redis.Redis) -> None:
    """POST /e/ with a JSON event → 200 {"status": 1}; one task whose event has the team, ip, site url and server time."""
    before = datetime.now(timezone.utc)
    response = post_json(client, "/e/", {"event": "$pageview", "properties": {"distinct_id": "u1", "token": TOKEN, "$current_url": "https://x.test/"}})
    assert response.status_code == 200
    assert response.json() == {"status": 1}
    [event] = queued_events(redis_client, queue)
    assert event["event"] == "$pageview"
    assert event["distinct_id"] == "u1"
    assert event["team_id"] == team.id
    assert event["ip"] == "127.0.0.1"
    assert event["site_url"] == "http://testserver"
    assert event["sent_at"] is None
    assert event["properties"]["$current_url"] == "https://x.test/"
    assert before <= datetime.fromisoformat(event["now"]) <= datetime.now(timezone.utc)


def test_a_python_sdk_batch_is_queued_in_order_with_its_sent_at(client: Client, team: Team, queue: str, redis_client: redis.Redis) -> None:
    """/batch/ {"api_key", "batch": [...], "sent_at"}: every event, in order, with sent_at."""
    batch = [{"event": f"e{n}", "distinct_id": f"d{n}", "properties": {"n": n}} for n in range(5)]
    response = post_json(client, "/batch/", {"api_key": TOKEN, "batch": batch, "sent_at": "2021-05-17T10:00:00.500000+00:00"})
    assert response.status_code == 200, response.content
    events = queued_events(redis_client, queue)
    assert [(e["event"], e["distinct_id"], e["properties"]["n"]) for e in events] == [(f"e{n}", f"d{n}", n) for n in range(5)]
    assert {e["sent_at"] for e in events} == {"2021-05-17T10:00:00.500000+00:00"}


def test_one_request_is_one_redis_push(client: Client, team: Team, queue: str, own_redis: OwnRedis) -> None:
    """A batch of 50 reaches Redis as one LPUSH, not 50 (counted on a Redis of the test's own)."""
    batch = [{"event": "e", "distinct_id": f"d{n}"} for n in range(50)]
    with override_settings(REDIS_URL=own_redis.url):
        post_json(client, "/batch/", {"api_key": TOKEN, "batch": batch})  # warm: connection, declaration, token
        own_redis.client().config_resetstat()
        assert post_json(client, "/batch/", {"api_key": TOKEN, "batch": batch}).status_code == 200
    stats = own_redis.client().info("commandstats")
    assert stats["cmdstat_lpush"]["calls"] == 1
    assert own_redis.client().llen(queue) == 100


def test_the_envelope_is_the_one_celerys_send_task_makes(client: Client, team: Team, queue: str, redis_client: redis.Redis) -> None:
    """Same envelope keys, headers, properties and body shape as a plain Celery send_task."""
    post_json(client, "/e/", {"event": "e", "distinct_id": "d", "api_key": TOKEN})
    with celery_app() as app:
        send_event_task(app, queue, task_args({"event": "e"}, distinct_id="d", team_id=team.id))
    ours, theirs = (json.loads(raw) for raw in reversed(redis_client.lrange(queue, 0, -1)))
    assert ours.keys() == theirs.keys()
    assert ours["headers"].keys() == theirs["headers"].keys()
    assert ours["headers"]["task"] == theirs["headers"]["task"] == "posthog.tasks.process_event.process_event_with_plugins"
    assert ours["properties"].keys() == theirs["properties"].keys()
    for key in ("content-type", "content-encoding"):
        assert ours[key] == theirs[key]
    assert ours["properties"]["delivery_info"] == theirs["properties"]["delivery_info"]
    assert ours["properties"]["body_encoding"] == theirs["properties"]["body_encoding"] == "base64"
    args, kwargs, embed = json.loads(base64.b64decode(ours["body"]))
    assert len(args) == 7 and kwargs == {} and embed.keys() == {"callbacks", "errbacks", "chain", "chord"}
    assert args[:5] == ["d", "127.0.0.1", "http://testserver", {"event": "e", "distinct_id": "d", "api_key": TOKEN, "properties": {}}, team.id]


def test_form_encoded_base64_data_and_posthog_js_sent_at(client: Client, team: Team, queue: str, redis_client: redis.Redis) -> None:
    """data=<base64 JSON> form field; `_` in milliseconds is sent_at."""
    events = [{"event": "$autocapture", "properties": {"distinct_id": "anon", "token": TOKEN}}]
    data = base64.b64encode(json.dumps(events).encode()).decode()
    response = client.post("/e/?_=1621245600123", data=f"data={data.replace('+', '%2B')}", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200, response.content
    [event] = queued_events(redis_client, queue)
    assert event["event"] == "$autocapture"
    assert datetime.fromisoformat(event["sent_at"]) == datetime(2021, 5, 17, 10, 0, 0, 123000, tzinfo=timezone.utc)


def test_get_with_data_in_the_query(client: Client, team: Team, queue: str, redis_client: redis.Redis) -> None:
    """GET /capture/?data=<base64> (an image pixel), spaces standing for '+'."""
    data = base64.b64encode(json.dumps({"event": "pixel", "distinct_id": "p?>", "token": TOKEN}).encode()).decode()
    response = client.get("/capture/", {"data": data.replace("+", " ")})
    assert response.status_code == 200, response.content
    assert [e["event"] for e in queued_events(redis_client, queue)] == ["pixel"]


@pytest.mark.parametrize("how", ["query gzip-js", "content-encoding gzip", "unannounced gzip", "form lz64", "body lz64"])
def test_compressed_bodies(how: str, client: Client, team: Team, queue: str, redis_client: redis.Redis) -> None:
    """gzip-js (older posthog-js), Content-Encoding: gzip (posthog-python), gzip said by its magic bytes
    only (today's posthog-js on /e/), lz64 (older posthog-js)."""
    events = [{"event": "compressed", "properties": {"distinct_id": "z", "token": TOKEN, "text": "é ✓ " * 50}}]
    text = json.dumps(events)
    if how == "query gzip-js":
        response = client.post("/i/v0/e/?compression=gzip-js&ver=1.449.2", data=gzip.compress(text.encode()), content_type="text/plain")
    elif how == "content-encoding gzip":
        response = client.post("/batch/", data=gzip.compress(text.encode()), content_type="application/json", headers={"Content-Encoding": "gzip"})
    elif how == "unannounced gzip":
        response = client.post("/e/", data=gzip.compress(text.encode()), content_type="text/plain")
    elif how == "form lz64":
        packed = LZString().compressToBase64(text)
        response = client.post("/e/", data=f"data={packed.replace('+', '%2B')}&compression=lz64", content_type="application/x-www-form-urlencoded")
    else:
        response = client.post("/e/?compression=lz64", data=LZString().compressToBase64(text).encode(), content_type="text/plain")
    assert response.status_code == 200, response.content
    [event] = queued_events(redis_client, queue)
    assert event["properties"]["text"] == "é ✓ " * 50


def test_engage_is_an_identify(client: Client, team: Team, queue: str, redis_client: redis.Redis) -> None:
    """/engage/ with one object: the event is $identify."""
    response = post_json(client, "/engage/", {"$token": TOKEN, "$distinct_id": "u9", "$set": {"email": "a@b.c"}})
    assert response.status_code == 200
    [event] = queued_events(redis_client, queue)
    assert (event["event"], event["distinct_id"], event["$set"]) == ("$identify", "u9", {"email": "a@b.c"})


def test_a_test_token_marks_the_test_environment(client: Client, team: Team, queue: str, redis_client: redis.Redis) -> None:
    """A `test_<key>` token is the project's key; the events get $environment = test."""
    assert post_json(client, "/e/", {"event": "e", "distinct_id": "d", "api_key": f"test_{TOKEN}"}).status_code == 200
    [event] = queued_events(redis_client, queue)
    assert event["properties"]["$environment"] == "test"
    assert event["team_id"] == team.id


def test_ip_is_the_peer_unless_a_trusted_proxy_forwards(client: Client, team: Team, queue: str, redis_client: redis.Redis) -> None:
    """X-Forwarded-For is ignored from an untrusted peer, followed from a trusted proxy; anonymize_ips → null."""
    body = {"event": "e", "distinct_id": "d", "api_key": TOKEN}
    post_json(client, "/e/", body, headers={"X-Forwarded-For": "6.6.6.6"})
    with override_settings(CAPTURE_TRUSTED_PROXIES="127.0.0.0/8, 10.0.0.1"):
        post_json(client, "/e/", body, headers={"X-Forwarded-For": "1.2.3.4, 10.0.0.1"})
    Team.objects.filter(id=team.id).update(anonymize_ips=True)
    from plugin_server.capture.views import team_cache

    team_cache().clear()
    post_json(client, "/e/", body)
    assert [e["ip"] for e in queued_events(redis_client, queue)] == ["127.0.0.1", "1.2.3.4", None]


def test_no_database_query_once_the_token_is_known(
    client: Client, team: Team, queue: str, django_assert_num_queries: Any
) -> None:
    """The token → team lookup is cached: a warm request makes no query."""
    body = {"api_key": TOKEN, "batch": [{"event": "e", "distinct_id": f"d{n}"} for n in range(20)]}
    post_json(client, "/batch/", body)
    with django_assert_num_queries(0):
        assert post_json(client, "/batch/", body).status_code == 200


def error_of(response: Any) -> tuple[int, str, str, str | None]:
    body = response.json()
    assert set(body) == {"type", "code", "detail", "attr"}
    return response.status_code, body["type"], body["code"], body["attr"]


@pytest.mark.parametrize(
    ("body", "content_type", "path", "expected"),
    [
        (b"", "application/json", "/e/", (400, "validation_error", "no_data", None)),
        (b'{"event": "e", "distinct_id": ', "application/json", "/e/", (400, "validation_error", "invalid_payload", None)),
        (b"not gzip", "text/plain", "/e/?compression=gzip-js", (400, "validation_error", "invalid_payload", None)),
        (b"@@@@", "text/plain", "/e/?compression=lz64", (400, "validation_error", "invalid_payload", None)),
        (b'{"event": "e", "distinct_id": "d"}', "application/json", "/e/", (401, "authentication_error", "missing_api_key", None)),
        (b'{"event": "e", "distinct_id": "d", "api_key": "nope"}', "application/json", "/e/", (401, "authentication_error", "invalid_api_key", None)),
        (b'{"event": "e", "api_key": "phc_capture_test_token"}', "application/json", "/e/", (400, "validation_error", "required", "distinct_id")),
        (b'{"event": "e", "distinct_id": "", "api_key": "phc_capture_test_token"}', "application/json", "/e/", (400, "validation_error", "required", "distinct_id")),
        (b'{"distinct_id": "d", "api_key": "phc_capture_test_token"}', "application/json", "/e/", (400, "validation_error", "required", "event")),
        (b'{"api_key": "phc_capture_test_token", "batch": [{"event": "ok", "distinct_id": "a"}, {"event": "bad"}]}', "application/json", "/batch/", (400, "validation_error", "required", "distinct_id")),
        (b'{"api_key": "phc_capture_test_token", "batch": [1, 2]}', "application/json", "/batch/", (400, "validation_error", "invalid_payload", None)),
    ],
    ids=["no data", "invalid json", "bad gzip", "bad lz64", "no token", "unknown token", "no distinct id", "empty distinct id", "no event", "one bad event in a batch", "events not objects"],
)
def test_bad_input_gets_posthogs_error_and_nothing_is_queued(
    body: bytes, content_type: str, path: str, expected: tuple[int, str, str, str | None], client: Client, team: Team, queue: str, redis_client: redis.Redis
) -> None:
    """PostHog's status and {"type", "code", "detail", "attr"}; a refused request queues nothing, even its good events."""
    response = client.post(path, data=body, content_type=content_type)
    assert error_of(response) == expected
    assert redis_client.llen(queue) == 0


def test_the_error_texts_are_posthogs(client: Client, team: Team, queue: str) -> None:
    """The details the SDKs show users, word for word."""
    assert client.post("/e/", data=b"{", content_type="application/json").json()["detail"].startswith("Malformed request data: Invalid JSON: ")
    assert post_json(client, "/e/", {"event": "e", "distinct_id": "d"}).json()["detail"] == (
        "API key not provided. You can find your project API key in PostHog project settings."
    )
    assert post_json(client, "/e/", {"event": "e", "distinct_id": "d", "api_key": "x"}).json()["detail"] == (
        "Project API key invalid. You can find your project API key in PostHog project settings."
    )
    assert post_json(client, "/e/", {"event": "e", "api_key": TOKEN}).json()["detail"] == "You need to set user distinct ID field `distinct_id`."
    assert post_json(client, "/e/", {"distinct_id": "d", "api_key": TOKEN}).json()["detail"] == "You need to set user event name, field `event`."


def test_an_oversized_body_is_refused_unread(client: Client, team: Team, queue: str, redis_client: redis.Redis) -> None:
    """Over CAPTURE_MAX_BODY_BYTES (raw, or once gunzipped) → 413, nothing queued."""
    body = json.dumps({"event": "e", "distinct_id": "d", "api_key": TOKEN, "properties": {"pad": "x" * 5000}}).encode()
    with override_settings(CAPTURE_MAX_BODY_BYTES=4096):
        assert error_of(client.post("/e/", data=body, content_type="application/json"))[:3] == (413, "validation_error", "payload_too_large")
        bomb = gzip.compress(body)
        assert len(bomb) < 4096
        assert error_of(client.post("/e/?compression=gzip-js", data=bomb, content_type="text/plain"))[:3] == (413, "validation_error", "payload_too_large")
    assert redis_client.llen(queue) == 0


def test_an_unreachable_queue_answers_503_and_accepts_nothing(client: Client, team: Team, queue: str) -> None:
    """Redis away → 503 server_error with Retry-After: the SDK sends again; nothing was accepted."""
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        started = datetime.now(timezone.utc)
        response = post_json(client, "/e/", {"event": "e", "distinct_id": "d", "api_key": TOKEN})
        assert datetime.now(timezone.utc) - started < timedelta(seconds=10)
    assert error_of(response) == (503, "server_error", "queue_unavailable", None)
    assert response["Retry-After"]


def test_cors_for_browsers(client: Client, team: Team, queue: str) -> None:
    """An Origin gets PostHog's CORS headers; a preflight OPTIONS is answered."""
    response = post_json(client, "/e/", {"event": "e", "distinct_id": "d", "api_key": TOKEN}, headers={"Origin": "http://site.test:8080"})
    assert response["Access-Control-Allow-Origin"] == "http://site.test:8080"
    assert response["Access-Control-Allow-Credentials"] == "true"
    preflight = client.options("/flags/", headers={"Origin": "http://site.test", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 200
    assert preflight["Access-Control-Allow-Headers"] == "content-type"
    assert "POST" in preflight["Access-Control-Allow-Methods"]
    assert client.put("/e/").status_code == 405


def test_decide_and_flags_answer_no_flags(client: Client, team: Team) -> None:
    """/decide/ (old posthog-js) and /flags/ (today's) say: no flags, autocapture on, no recordings."""
    decide = post_json(client, "/decide/?v=3", {"token": TOKEN, "distinct_id": "d"}).json()
    assert decide["featureFlags"] == {} and decide["sessionRecording"] is False
    assert decide["config"] == {"enable_collect_everything": True}
    assert "gzip-js" in decide["supportedCompression"]
    assert post_json(client, "/decide/", {"token": TOKEN, "distinct_id": "d"}).json()["featureFlags"] == []
    flags = post_json(client, "/flags/?v=2&config=true", {"token": TOKEN, "distinct_id": "d"}).json()
    assert flags["flags"] == {} and flags["errorsWhileComputingFlags"] is False
    assert flags["elementsChainAsString"] is False
    assert post_json(client, "/flags/?v=2", {"token": "unknown", "distinct_id": "d"}).status_code == 401
    assert client.get(f"/array/{TOKEN}/config").json()["token"] == TOKEN
    assert b"_POSTHOG_REMOTE_CONFIG" in client.get(f"/array/{TOKEN}/config.js").content


def test_a_new_team_is_seen_without_a_restart(client: Client, queue: str) -> None:
    """An unknown token is remembered as unknown only for the cache TTL."""
    with override_settings(CAPTURE_TOKEN_CACHE_TTL=0.0):
        assert post_json(client, "/e/", {"event": "e", "distinct_id": "d", "api_key": "phc_later"}).status_code == 401
        create_team(api_token="phc_later")
        assert post_json(client, "/e/", {"event": "e", "distinct_id": "d", "api_key": "phc_later"}).status_code == 200


def test_a_redis_restart_gives_503_meanwhile_and_then_accepts_again(client: Client, team: Team, queue: str, own_redis: OwnRedis) -> None:
    """Redis killed after use: 503 (nothing accepted); Redis back on the same port: accepted again,
    with no restart of the endpoint. The queue holds exactly the accepted events."""

    def send(name: str) -> Any:
        return post_json(client, "/e/", {"event": name, "distinct_id": "d", "api_key": TOKEN})

    with override_settings(REDIS_URL=own_redis.url):
        assert send("before").status_code == 200
        own_redis.kill()
        assert error_of(send("while away"))[:3] == (503, "server_error", "queue_unavailable")
        own_redis.start()
        assert send("after").status_code == 200
        # Redis kept nothing across the restart (no persistence here): only what came after is there.
        assert [e["event"] for e in queued_events(own_redis.client(), queue)] == ["after"]


def test_recordings_on_s(client: Client, team: Team, queue: str, redis_client: redis.Redis) -> None:
    """/s/ takes posthog-js' $snapshot events like any other."""
    snapshot = {"event": "$snapshot", "properties": {"distinct_id": "d", "token": TOKEN, "$session_id": "s1", "$snapshot_data": {"type": 2}}}
    assert client.post("/s/?compression=gzip-js", data=gzip.compress(json.dumps([snapshot]).encode()), content_type="text/plain").status_code == 200
    [event] = queued_events(redis_client, queue)
    assert (event["event"], event["properties"]["$session_id"]) == ("$snapshot", "s1")
