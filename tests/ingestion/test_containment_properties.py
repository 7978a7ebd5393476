"""Property: every generated message ends stored or dead-lettered, and nothing raises.

Hypothesis builds Celery envelopes and events (well-formed, malformed,
hostile: any JSON values in any field, ids of every type, team ids out of
range, NUL and lone surrogates, deep nesting, broken envelopes and raw
bytes), pushes each example's batch onto a queue of its own, and runs the
real consumer (decode → prepare → store → dead letters → ack) over it with
the real Redis and Postgres. Counted from the consumer's own metrics and the
dead-letter table: stored + already stored + dead-lettered = sent.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
import redis
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.sources.celery import CelerySource
from plugin_server.metrics import INGESTION_EVENTS_DUPLICATE, INGESTION_EVENTS_STORED, RecordingMetrics, set_metrics
from plugin_server.models import DeadLetter
from tests.factories import create_team
from tests.ingestion.hostile import deep_json, raw_envelope, task_body_text

pytestmark = [pytest.mark.redis, pytest.mark.django_db]

OPTIONS = {"poll_timeout": 0.0, "retry_backoff": 0.0, "retry_backoff_max": 0.0, "max_message_bytes": 200_000, "max_event_depth": 20}

# Texts with what breaks things: NUL, lone surrogates, bidi marks, huge code points.
texts = st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=30) | st.sampled_from(
    ["", "\x00", "\ud800", "$pageview", "$snapshot", "$identify", "$create_alias", "null", "2021-01-01T00:00:00Z", "+30000-01-01T00:00:00Z"]
)
numbers = (
    st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 3.0, 1e21, 1e-7, 2**31, 2**63, -1])
)
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=12)
uuids = st.uuids().map(str) | st.sampled_from(["not-a-uuid", "", "0179F2A1-0000-0000-0000-000000000001"]) | json_values


def _json_text(value: Any) -> str:
    # What a producer's json.dumps writes (NaN and Infinity included, lone surrogates escaped).
    return json.dumps(value)


@st.composite
def events(draw: st.DrawFn, team_ids: list[Any], plausible: bool) -> dict[str, Any]:
    """An event's data: every key optional and of any type, or (``plausible``) the usual keys
    well-typed around hostile contents, so that most reach storage."""
    event: dict[str, Any] = {}
    for key, values, usual in (
        ("event", texts | json_values, texts),
        ("properties", st.dictionaries(texts, json_values, max_size=5) | json_values, st.dictionaries(texts, json_values, max_size=5)),
        ("uuid", uuids, st.uuids().map(str)),
        ("timestamp", texts | numbers, st.datetimes().map(lambda moment: moment.isoformat() + "Z") | texts),
        ("offset", numbers | texts, numbers),
        ("$set", st.dictionaries(texts, json_values, max_size=3) | json_values, st.dictionaries(texts, json_values, max_size=3)),
        ("team_id", st.sampled_from(team_ids), st.just(team_ids[0])),
        ("distinct_id", scalars | json_values, st.booleans() | numbers | texts),
    ):
        if plausible and key in ("event", "properties", "team_id", "distinct_id"):
            event[key] = draw(usual)
        elif draw(st.booleans()):
            event[key] = draw(usual if plausible else values)
    return event


@st.composite
def messages(draw: st.DrawFn, team_ids: list[Any]) -> bytes:
    kind = draw(st.sampled_from(["plausible", "plausible", "plausible", "task", "deep", "raw", "mangled"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "deep":
        levels = draw(st.integers(min_value=15, max_value=3000))
        where = draw(st.sampled_from(["properties", "event", "distinct_id"]))
        data = {"properties": f'{{"x": {deep_json(levels)}}}', "event": deep_json(levels), "distinct_id": '"d"'}
        data_text = f'{{"event": {data["event"] if where == "event" else json.dumps("deep")}, "properties": {data["properties"] if where == "properties" else "{}"}}}'
        team = _json_text(draw(st.sampled_from(team_ids)))
        return raw_envelope(task_body_text(data_text, team, deep_json(levels) if where == "distinct_id" else '"d"'))
    plausible = kind == "plausible"
    data = draw(events(team_ids, plausible) if plausible else events(team_ids, plausible) | json_values)
    team_id = team_ids[0] if plausible else draw(st.sampled_from(team_ids))
    body = task_body_text(_json_text(data), _json_text(team_id), _json_text(draw(scalars | json_values)))
    envelope = raw_envelope(body)
    if kind == "mangled":
        cut = draw(st.integers(min_value=0, max_value=len(envelope)))
        envelope = envelope[:cut] + draw(st.binary(max_size=8)) + envelope[cut:]
    return envelope


@pytest.fixture
def team_ids() -> list[Any]:
    team = create_team()
    return [team.id, str(team.id), 2**31, 2**70, -1, 0, True, 3.0, float(team.id), None, "abc", math.inf, [team.id]]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_ends_stored_or_dead_lettered(data: st.DataObject, team_ids: list[Any], redis_client: redis.Redis) -> None:
    """Never raised, never lost: stored + duplicates + dead letters == messages sent, nothing left in flight."""
    batch = data.draw(st.lists(messages(team_ids), min_size=1, max_size=6))
    queue = f"test-prop-{uuid.uuid4().hex[:12]}"
    for payload in batch:
        redis_client.lpush(queue, payload)
    backend = RecordingMetrics()
    set_metrics(backend)
    source = CelerySource(queue=queue)
    source.start()
    try:
        consumer = Consumer(source, Ingester(max_event_bytes=200_000), pool=None, options=ConsumerOptions.from_settings(**OPTIONS))
        for _ in range(len(batch) + 2):
            if consumer.run_once() == 0:
                break
        assert source.in_flight() == 0 and redis_client.llen(queue) == 0
    finally:
        source.close()
        set_metrics(None)
    assert not connection.needs_rollback
    letters = DeadLetter.objects.filter(queue=queue).count()
    outcome = backend.total(INGESTION_EVENTS_STORED) + backend.total(INGESTION_EVENTS_DUPLICATE) + letters
    assert outcome == len(batch)
