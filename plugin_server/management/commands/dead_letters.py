"""``./manage.py dead_letters list|show|replay|purge``: look after the dead-letter store.

- ``list [--reason R] [--team T] [--replayed] [--limit N]``: the letters, newest last.
- ``show ID``: one letter in full, with its message decoded where it can be.
- ``replay (ID ... | --reason R | --all)``: put the raw messages back on their
  queues (not yet replayed ones only, unless named by id); the running server
  takes them like any other message.
- ``purge (ID ... | --reason R | --replayed | --older-than-days N)``: delete.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet
from django.utils import timezone

from plugin_server.events import Delivery
from plugin_server.exceptions import InvalidMessage
from plugin_server.ingestion.decode import decode
from plugin_server.ingestion.dlq import pending, replay
from plugin_server.models import DeadLetter

SHOW_LIMIT = 20_000


class Command(BaseCommand):
    help = "List, show, replay or purge the messages the ingestion consumer could not ingest."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        listing = actions.add_parser("list", help="list dead letters")
        listing.add_argument("--reason")
        listing.add_argument("--team", type=int)
        listing.add_argument("--replayed", action="store_true", help="include the letters already replayed")
        listing.add_argument("--limit", type=int, default=100)
        show = actions.add_parser("show", help="show one dead letter in full")
        show.add_argument("id")
        replaying = actions.add_parser("replay", help="put messages back on their queue")
        replaying.add_argument("ids", nargs="*")
        replaying.add_argument("--reason")
        replaying.add_argument("--all", action="store_true", help="every letter not replayed yet")
        purging = actions.add_parser("purge", help="delete dead letters")
        purging.add_argument("ids", nargs="*")
        purging.add_argument("--reason")
        purging.add_argument("--replayed", action="store_true", help="the letters already replayed")
        purging.add_argument("--older-than-days", type=float)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        getattr(self, f"_{action}")(options)

    def _list(self, options: dict[str, Any]) -> None:
        letters = DeadLetter.objects.order_by("-created_at")
        if not options["replayed"]:
            letters = letters.filter(replayed_at__isnull=True)
        if options["reason"]:
            letters = letters.filter(reason=options["reason"])
        if options["team"] is not None:
            letters = letters.filter(team_id=options["team"])
        rows = list(letters.defer("payload")[: options["limit"]])
        for letter in reversed(rows):
            replayed = f" replayed {letter.replayed_at:%Y-%m-%d %H:%M:%S}" if letter.replayed_at else ""
            self.stdout.write(
                f"{letter.id}  {letter.created_at:%Y-%m-%d %H:%M:%S}  {letter.reason:<18} {letter.source}:{letter.queue}"
                f"  team={letter.team_id}{replayed}  {letter.error[:100]}"
            )
        self.stdout.write(f"{len(rows)} dead letter(s)")

    def _show(self, options: dict[str, Any]) -> None:
        try:
            letter = DeadLetter.objects.get(id=options["id"])
        except (DeadLetter.DoesNotExist, ValueError) as error:
            raise CommandError(f"no dead letter {options['id']}") from error
        payload = bytes(letter.payload)
        for name in ("id", "created_at", "source", "queue", "reason", "error", "team_id", "event_uuid", "replayed_at"):
            self.stdout.write(f"{name}: {getattr(letter, name)}")
        self.stdout.write(f"payload: {len(payload)} bytes")
        try:
            event = decode(Delivery(payload=payload, token=None, queue=letter.queue), max_bytes=len(payload))
            self.stdout.write("event:\n" + json.dumps(event, indent=2, default=str)[:SHOW_LIMIT])
        except InvalidMessage:
            self.stdout.write("raw:\n" + payload[:SHOW_LIMIT].decode("utf-8", errors="replace"))

    def _replay(self, options: dict[str, Any]) -> None:
        if options["ids"]:
            letters: QuerySet[DeadLetter] = DeadLetter.objects.filter(id__in=options["ids"])
        elif options["reason"]:
            letters = pending().filter(reason=options["reason"])
        elif options["all"]:
            letters = pending()
        else:
            raise CommandError("name the letters to replay: ids, --reason R or --all")
        try:
            count = replay(letters.iterator(chunk_size=500))
        except ValueError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"replayed {count} dead letter(s)")

    def _purge(self, options: dict[str, Any]) -> None:
        letters = DeadLetter.objects.all()
        selected = False
        if options["ids"]:
            letters, selected = letters.filter(id__in=options["ids"]), True
        if options["reason"]:
            letters, selected = letters.filter(reason=options["reason"]), True
        if options["replayed"]:
            letters, selected = letters.filter(replayed_at__isnull=False), True
        if options["older_than_days"] is not None:
            cutoff = timezone.now() - timedelta(days=options["older_than_days"])
            letters, selected = letters.filter(created_at__lt=cutoff), True
        if not selected:
            raise CommandError("name the letters to purge: ids, --reason, --replayed or --older-than-days")
        count, _ = letters.delete()
        self.stdout.write(f"purged {count} dead letter(s)")
