"""The dead-letter store and `./manage.py dead_letters` (list, show, replay, purge), on real Postgres and Redis."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.core.management import CommandError, call_command
from django.utils import timezone

from plugin_server.events import Delivery
from plugin_server.ingestion.decode import decode
from plugin_server.ingestion.dlq import DeadLetterEntry, DeadLetterStore
from plugin_server.metrics import DLQ_WRITTEN, INGESTION_MESSAGES_INVALID, RecordingMetrics
from plugin_server.models import DeadLetter
from tests.ingestion.celery_tasks import celery_app, send_event_task, task_args

pytestmark = [pytest.mark.django_db, pytest.mark.redis]


def entry(queue: str = "q", reason: str = "unknown_team", payload: bytes = b"{}", **fields: Any) -> DeadLetterEntry:
    return DeadLetterEntry(source="celery", queue=queue, reason=reason, error=f"error for {reason}", payload=payload, **fields)


def raw_task(redis_client: redis.Redis, queue: str, **args: Any) -> bytes:
    """A real Celery message, taken off its queue again."""
    with celery_app() as app:
        send_event_task(app, queue, task_args(**args))
    payload = redis_client.rpop(queue)
    assert payload is not None
    return payload


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("dead_letters", *args, stdout=out)
    return out.getvalue()


def test_write_keeps_every_entry_in_one_insert_and_counts_it(
    django_assert_num_queries: Any, recording_metrics: RecordingMetrics
) -> None:
    """A batch of letters is one INSERT; each is counted under its reason."""
    entries = [entry(reason="unknown_team", team_id=5, event_uuid="0179f3d5-1a2b-0000-aaaa-bbbbccccdddd"), entry(reason="bad_envelope")]
    with django_assert_num_queries(1):
        DeadLetterStore().write(entries)
    letters = {letter.reason: letter for letter in DeadLetter.objects.all()}
    assert set(letters) == {"unknown_team", "bad_envelope"}
    assert letters["unknown_team"].team_id == 5
    assert str(letters["unknown_team"].event_uuid) == "0179f3d5-1a2b-0000-aaaa-bbbbccccdddd"
    assert bytes(letters["bad_envelope"].payload) == b"{}"
    assert recording_metrics.total(DLQ_WRITTEN) == 2
    assert recording_metrics.total(INGESTION_MESSAGES_INVALID) == 2


def test_a_uuid_that_is_not_one_is_kept_without_the_column() -> None:
    """A letter whose event uuid is garbage is still kept (event_uuid null)."""
    DeadLetterStore().write([entry(event_uuid="not-a-uuid")])
    assert DeadLetter.objects.get().event_uuid is None


def test_replay_puts_the_raw_message_back_on_its_queue(redis_client: redis.Redis, unique_name: str) -> None:
    """`dead_letters replay ID` pushes the raw message onto its queue and marks the letter replayed."""
    payload = raw_task(redis_client, unique_name, distinct_id="replayed-id")
    DeadLetterStore().write([entry(queue=unique_name, payload=payload), entry(queue=unique_name, reason="other")])
    letter = DeadLetter.objects.get(reason="unknown_team")
    assert "replayed 1 dead letter(s)" in run("replay", str(letter.id))
    back = redis_client.rpop(unique_name)
    assert back == payload
    assert decode(Delivery(payload=back, token=0, queue=unique_name), 10**6)["distinct_id"] == "replayed-id"
    letter.refresh_from_db()
    assert letter.replayed_at is not None
    assert DeadLetter.objects.get(reason="other").replayed_at is None


def test_replay_by_reason_takes_only_pending_letters(redis_client: redis.Redis, unique_name: str) -> None:
    """`replay --reason R` replays the letters of that reason not replayed yet."""
    DeadLetterStore().write([entry(queue=unique_name, payload=b"a"), entry(queue=unique_name, payload=b"b"), entry(queue=unique_name, reason="x")])
    DeadLetter.objects.filter(payload=b"a").update(replayed_at=timezone.now())
    run("replay", "--reason", "unknown_team")
    assert redis_client.lrange(unique_name, 0, -1) == [b"b"]


def test_replay_needs_a_selection() -> None:
    """`replay` alone refuses rather than replaying everything by accident."""
    with pytest.raises(CommandError):
        run("replay")


def test_list_shows_pending_letters_with_their_reason() -> None:
    """`list` prints pending letters (reason, queue, team, error); --replayed adds the replayed ones."""
    DeadLetterStore().write([entry(reason="unknown_team", team_id=9), entry(reason="bad_body")])
    DeadLetter.objects.filter(reason="bad_body").update(replayed_at=timezone.now())
    listed = run("list")
    assert "unknown_team" in listed and "team=9" in listed and "celery:q" in listed
    assert "bad_body" not in listed
    assert "bad_body" in run("list", "--replayed")
    assert "1 dead letter(s)" in run("list", "--reason", "unknown_team")


def test_show_decodes_the_message_when_it_can(redis_client: redis.Redis, unique_name: str) -> None:
    """`show ID` prints the letter and, for a Celery message, the event it carries."""
    DeadLetterStore().write([entry(queue=unique_name, payload=raw_task(redis_client, unique_name, distinct_id="shown-id"))])
    shown = run("show", str(DeadLetter.objects.get().id))
    assert "reason: unknown_team" in shown
    assert '"distinct_id": "shown-id"' in shown


def test_show_prints_a_malformed_message_raw() -> None:
    """A message that does not decode is shown as text."""
    DeadLetterStore().write([entry(reason="bad_envelope", payload=b"garbage \xff")])
    assert "garbage" in run("show", str(DeadLetter.objects.get().id))


def test_purge_deletes_the_selected_letters_only() -> None:
    """`purge --replayed` and `purge --older-than-days` delete what they name; bare `purge` refuses."""
    DeadLetterStore().write([entry(reason="a"), entry(reason="b"), entry(reason="c")])
    DeadLetter.objects.filter(reason="a").update(replayed_at=timezone.now())
    DeadLetter.objects.filter(reason="b").update(created_at=timezone.now() - timedelta(days=10))
    with pytest.raises(CommandError):
        run("purge")
    assert "purged 1" in run("purge", "--replayed")
    assert "purged 1" in run("purge", "--older-than-days", "7")
    assert list(DeadLetter.objects.values_list("reason", flat=True)) == ["c"]
