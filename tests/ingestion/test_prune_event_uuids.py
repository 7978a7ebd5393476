"""./manage.py prune_event_uuids forgets only the uuids older than the window."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from plugin_server.ingestion.uuidt import uuidt
from plugin_server.models import IngestedEventUuid

pytestmark = pytest.mark.django_db


def test_old_uuids_are_deleted_in_chunks_and_recent_ones_kept() -> None:
    """5 uuids 4 days old and 2 from now: a 72-hour prune in chunks of 2 deletes exactly the 5."""
    old = [IngestedEventUuid.objects.create(uuid=uuidt(), team_id=1) for _ in range(5)]
    IngestedEventUuid.objects.filter(uuid__in=[row.uuid for row in old]).update(created_at=timezone.now() - timedelta(days=4))
    recent = [IngestedEventUuid.objects.create(uuid=uuidt(), team_id=1) for _ in range(2)]
    out = io.StringIO()
    call_command("prune_event_uuids", "--older-than-hours", "72", "--chunk", "2", stdout=out)
    assert out.getvalue().strip() == "deleted 5 event uuids older than 72 hours"
    assert sorted(IngestedEventUuid.objects.values_list("uuid", flat=True)) == sorted(row.uuid for row in recent)
