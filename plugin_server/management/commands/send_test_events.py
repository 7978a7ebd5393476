"""``./manage.py send_test_events``: send events the way PostHog's capture endpoint does.

PostHog's capture endpoint hands each event to the plugin server as a
Celery task, ``posthog.tasks.process_event.process_event_with_plugins``,
on the ``PLUGINS_CELERY_QUEUE`` list of the Redis in ``REDIS_URL``. This
command does the same with Celery's own client (``send_task``), so what a
running ``run_plugin_server`` receives is exactly what it would receive
from PostHog. With ``--wait`` it then watches ``posthog_event`` until the
events are stored, and prints them as stored (after the team's plugins ran).

The same from any Python shell, without this command::

    from celery import Celery
    app = Celery(broker="redis://127.0.0.1:6379")
    app.send_task(
        "posthog.tasks.process_event.process_event_with_plugins",
        args=["someone", "127.0.0.1", "http://localhost", {"event": "$pageview", "properties": {}},
              1, "2021-05-17T10:00:00+00:00", None],  # distinct_id, ip, site_url, data, team_id, now, sent_at
        queue="posthog-plugins",
    )
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from celery import Celery
from django.core.management.base import BaseCommand, CommandError, CommandParser

from plugin_server.config import get_config, mask_url
from plugin_server.management.commands.setup_demo import DEMO_API_TOKEN
from plugin_server.events import CELERY_TASK_NAME
from plugin_server.models import Event, Team

# The property that marks this run's events, so that --wait finds them.
RUN_PROPERTY = "$send_test_events_run"


def task_args(team_id: int, distinct_id: str, event: str, properties: dict[str, Any]) -> list[Any]:
    """The task's 7 positional arguments, as PostHog's capture endpoint builds them."""
    now = datetime.now(timezone.utc).isoformat()
    data = {"event": event, "properties": properties, "timestamp": now}
    return [distinct_id, "127.0.0.1", "http://localhost", data, team_id, now, now]


def choose_team(team_id: int | None) -> Team:
    """The given team; else the demo team (``setup_demo``); else the only team there is."""
    if team_id is not None:
        team = Team.objects.filter(id=team_id).first()
        if team is None:
            raise CommandError(f"No team with id {team_id}")
        return team
    demo = Team.objects.filter(api_token=DEMO_API_TOKEN).first()
    if demo is not None:
        return demo
    teams = list(Team.objects.order_by("id")[:2])
    if len(teams) == 1:
        return teams[0]
    if not teams:
        raise CommandError("No team yet: run ./manage.py setup_demo (a demo team with a plugin), or create one in the admin")
    raise CommandError("There are several teams: choose one with --team ID")


class Command(BaseCommand):
    help = "Send test events as PostHog does (a Celery task on PLUGINS_CELERY_QUEUE); --wait shows them stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--team", type=int, help="team id (default: the demo team, else the only team)")
        parser.add_argument("--count", type=int, default=1, help="how many events (default %(default)s)")
        parser.add_argument("--event", default="$pageview", help="event name (default %(default)s)")
        parser.add_argument("--distinct-id", default="test-user", help="the person's distinct id (default %(default)s)")
        parser.add_argument("--properties", default="{}", help="event properties, a JSON object")
        parser.add_argument("--wait", type=float, nargs="?", const=10.0, metavar="SECONDS",
                            help="wait until the events are stored (default 10 s) and print them")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            properties = json.loads(options["properties"])
        except ValueError as error:
            raise CommandError(f"--properties is not valid JSON: {error}") from None
        if not isinstance(properties, dict):
            raise CommandError("--properties must be a JSON object")
        if options["count"] < 1:
            raise CommandError("--count must be at least 1")
        team = choose_team(options["team"])
        run = uuid.uuid4().hex
        properties[RUN_PROPERTY] = run
        config = get_config()
        app = Celery("send-test-events", broker=config.redis_url)
        try:
            for _ in range(options["count"]):
                app.send_task(
                    CELERY_TASK_NAME,
                    args=task_args(team.pk, options["distinct_id"], options["event"], properties),
                    queue=config.plugins_celery_queue,
                )
        finally:
            app.close()
        self.stdout.write(
            f"Sent {options['count']} {options['event']} event(s) for team {team.pk} ({team.name}) to the Celery queue "
            f"{config.plugins_celery_queue} on {mask_url(config.redis_url)}"
        )
        if options["wait"] is not None:
            self._wait(team.pk, run, options["count"], options["wait"])

    def _wait(self, team_id: int, run: str, count: int, seconds: float) -> None:
        if Event is None:
            raise CommandError("--wait reads posthog_event, which this PostHog does not have (events go to ClickHouse)")
        stored = Event.objects.filter(team_id=team_id, properties__contains={RUN_PROPERTY: run})
        deadline = time.monotonic() + seconds
        found = 0
        while time.monotonic() < deadline:
            found = stored.count()
            if found >= count:
                break
            time.sleep(0.2)
        else:
            raise CommandError(
                f"{found} of {count} event(s) stored after {seconds:g} s: is ./manage.py run_plugin_server running "
                "(on this database and queue)? A plugin may also have dropped them."
            )
        for event in stored.order_by("id"):
            shown = {key: value for key, value in event.properties.items() if key != RUN_PROPERTY}
            self.stdout.write(f"Stored: {event.event} for {event.distinct_id}, properties {json.dumps(shown, sort_keys=True)}")
