"""Operators' admin: dead letters replayed and purged from the admin; plugin health on the config pages."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from plugin_server.models import DeadLetter

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

ENVELOPE = b'{"body": "not really", "headers": {}}'


def _letters_action(client: Client, action: str, letters: list[DeadLetter]) -> Any:
    return client.post(reverse("admin:plugin_server_deadletter_changelist"),
                       {"action": action, "_selected_action": [str(letter.pk) for letter in letters]}, follow=True)


def _letter(queue: str, reason: str = "invalid_json", payload: bytes = ENVELOPE) -> DeadLetter:
    return DeadLetter.objects.create(source="celery", queue=queue, reason=reason, error="Expecting value", payload=payload)


def test_the_replay_action_puts_the_raw_messages_back_on_their_queue(admin_client: Client, unique_name: str,
                                                                     redis_client: redis.Redis) -> None:
    first, second, untouched = _letter(unique_name, payload=b"one"), _letter(unique_name, payload=b"two"), _letter(unique_name)
    page = _letters_action(admin_client, "replay_letters", [first, second]).content.decode()
    assert "Replayed 2 dead letter(s)" in page
    assert sorted(redis_client.lrange(unique_name, 0, -1)) == [b"one", b"two"]
    assert DeadLetter.objects.filter(pk__in=[first.pk, second.pk], replayed_at__isnull=False).count() == 2
    assert DeadLetter.objects.get(pk=untouched.pk).replayed_at is None


def test_the_purge_action_deletes_only_the_selected_letters(admin_client: Client, unique_name: str) -> None:
    gone, kept = _letter(unique_name), _letter(unique_name, reason="unknown_team")
    assert "Purged 1 dead letter(s)" in _letters_action(admin_client, "purge_letters", [gone]).content.decode()
    assert list(DeadLetter.objects.values_list("pk", flat=True)) == [kept.pk]


def test_replay_and_purge_need_their_permissions(client: Client, unique_name: str, redis_client: redis.Redis) -> None:
    """A staff user who may only view dead letters sees neither action and cannot run them."""
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    client.force_login(viewer)
    letter = _letter(unique_name)
    page = client.get(reverse("admin:plugin_server_deadletter_changelist")).content.decode()
    assert "replay_letters" not in page and "purge_letters" not in page
    _letters_action(client, "purge_letters", [letter])
    _letters_action(client, "replay_letters", [letter])
    assert DeadLetter.objects.filter(pk=letter.pk, replayed_at__isnull=True).exists()
    assert redis_client.llen(unique_name) == 0
