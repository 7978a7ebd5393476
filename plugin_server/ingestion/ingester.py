"""The events processor: a batch of plugin events in, stored rows out.

One :meth:`Ingester.ingest` call per batch:

1. check every event (:func:`~.prepare.check_event`): bad input becomes an
   :class:`InvalidMessage` in the result, for the consumer to dead-letter;
2. read the batch's teams (one query for those not cached) and prepare each
   event (name, elements, ``$ip``, campaign properties, timestamp); steps 1
   and 2 are also :meth:`Ingester.prepare`, which the consumer runs for the
   next batch while the current one is stored;
3. write new event/property definitions and first-event flags (own short
   transactions, nothing when nothing is new);
4. in ONE transaction: claim the (team, uuid) pairs (a re-delivered event is
   skipped here, before it could touch a person twice), apply the person
   updates of the fresh events, and let the sink write them;
5. after the commit, send webhook tasks for the stored events of teams
   with hooks (:mod:`.webhooks`).

When ``ingest`` returns, the batch is durable. A service failure raises
:class:`RetriableError` with nothing committed by step 4. If the database
refuses the data of some event (a value too long for a column, say), the
batch is split in halves until the refused events are isolated: they are
returned as invalid (``database_rejected``) and every other event is stored.

Metrics: ``ingestion.timestamp_ignored`` (a timestamp, sent_at or offset
that could not be used), ``ingestion.sanitised`` (NUL characters, lone
surrogates or NaN replaced), ``ingestion.batch_split`` (a refused batch was
bisected). Watch ``ingestion.ingest_time`` for the cost of one batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.db import DataError, IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from plugin_server import metrics
from plugin_server.config import get_config
from plugin_server.events import PluginEvent
from plugin_server.exceptions import InvalidMessage, RetriableError
from plugin_server.ingestion.definitions import DefinitionsManager
from plugin_server.ingestion.elements import elements_chain
from plugin_server.ingestion.persons import PersonManager
from plugin_server.ingestion.prepare import PreparedItem, Reason, add_campaign_properties, check_event, invalid, prepare_event
from plugin_server.ingestion.timestamps import format_iso
from plugin_server.ingestion.teams import TeamInfo, TeamManager, Telemetry
from plugin_server.ingestion.webhooks import CeleryWebhooks
from plugin_server.metrics import get_metrics
from plugin_server.sinks.base import PreparedBatch, PreparedEvent, Sink

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class IngestResult:
    """What became of a batch: uuids (as the events gave them) stored or skipped as
    already stored, and the events that can never be stored, with why."""

    stored: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    invalid: list[tuple[PluginEvent, InvalidMessage]] = field(default_factory=list)


@dataclass(slots=True)
class PreparedInput:
    """A batch after :meth:`Ingester.prepare`: its events, their prepared items, and the
    events already found invalid or repeated within the batch."""

    events: Sequence[PluginEvent]
    items: list[PreparedItem]
    result: IngestResult


_CLAIM_UUIDS = (
    "INSERT INTO plugin_server_ingestedeventuuid (uuid, team_id, created_at)"
    " SELECT uuid, team_id, now()"
    " FROM unnest(string_to_array(%s, ',')::uuid[], string_to_array(%s, ',')::int[]) AS new (uuid, team_id)"
    " ON CONFLICT DO NOTHING RETURNING uuid::text, team_id"
)


class Ingester:
    """Stores batches of events; one per ingesting process (it holds the caches).

    ``clock`` gives the current time (the fallback for an event without
    ``now``, and the creation time of persons without ``sent_at``)."""

    def __init__(
        self,
        sink: Sink | None = None,
        persons: PersonManager | None = None,
        clock: Callable[[], datetime] = timezone.now,
        *,
        teams: TeamManager | None = None,
        definitions: DefinitionsManager | None = None,
        telemetry: Telemetry | None = None,
        webhooks: CeleryWebhooks | None = None,
        max_event_bytes: int | None = None,
    ) -> None:
        if sink is None:
            from plugin_server.sinks.postgres import PostgresSink

            sink = PostgresSink()
        self.sink = sink
        self.persons = persons if persons is not None else PersonManager()
        self.teams = teams if teams is not None else TeamManager()
        self.definitions = definitions if definitions is not None else DefinitionsManager()
        self._clock = clock
        self._telemetry = telemetry
        self.webhooks = webhooks if webhooks is not None else CeleryWebhooks()
        self._max_event_bytes = max_event_bytes if max_event_bytes is not None else get_config().max_event_size_bytes

    def prepare(self, events: Sequence[PluginEvent]) -> PreparedInput:
        """Steps 1 and 2 alone (checks, teams, preparing): what :meth:`ingest` can be handed.

        No write and, with the teams cached, no I/O: the consumer runs it for
        the next batch while the current one is being stored. The result is
        for one ``ingest`` call of these same events (a retry prepares afresh)."""
        result = IngestResult()
        try:
            items = self._prepare(events, result)
        except (OperationalError, InterfaceError) as error:
            raise RetriableError(f"database unavailable: {error}") from error
        return PreparedInput(events, items, result)

    def ingest(self, events: Sequence[PluginEvent], prepared: PreparedInput | None = None) -> IngestResult:
        """Store the batch; durable when this returns. Raises RetriableError if a service is away.

        ``prepared``: what :meth:`prepare` made of these events, if it was run
        ahead (used once; anything else is prepared here)."""
        with metrics.timed(metrics.INGESTION_INGEST_TIME):
            try:
                if prepared is not None and prepared.events is events:
                    result, items = prepared.result, prepared.items
                else:
                    result = IngestResult()
                    items = self._prepare(events, result)
                if items:
                    regular = [item.row for item in items if isinstance(item.row, PreparedEvent)]
                    # Definitions see the properties after $ip and before the campaign step.
                    self.definitions.write(self.definitions.new_definitions((row.team_id, row.event, row.properties) for row in regular))
                    for row in regular:
                        add_campaign_properties(row.properties)
                    self._record_first_events(items, events)
                    stored = self._store(items, events, result)
                    self.sink.flush()
                    self._send_webhooks(stored)
            except (OperationalError, InterfaceError) as error:
                raise RetriableError(f"database unavailable: {error}") from error
        return result

    def _prepare(self, events: Sequence[PluginEvent], result: IngestResult) -> list[PreparedItem]:
        backend = get_metrics()
        checked: list[tuple[int, PluginEvent]] = []
        for index, raw in enumerate(events):
            try:
                event, sanitised = check_event(raw, self._max_event_bytes)
            except InvalidMessage as error:
                result.invalid.append((raw, error))
                continue
            if sanitised:
                backend.incr(metrics.INGESTION_SANITISED, tags={"team_id": event["team_id"]})
            checked.append((index, event))
        teams = self.teams.fetch_teams(event["team_id"] for _, event in checked)
        received = self._clock()
        seen: set[tuple[int, str]] = set()
        items: list[PreparedItem] = []
        for index, event in checked:
            team = teams.get(event["team_id"])
            if team is None:
                unknown = invalid(Reason.UNKNOWN_TEAM, f"No team found with ID {event['team_id']}. Can't ingest event.", event["team_id"])
                result.invalid.append((events[index], unknown))
                continue
            key = (event["team_id"], event["uuid"].lower())
            if key in seen:
                result.duplicates.append(event["uuid"])
                continue
            try:
                item = prepare_event(index, event, team, received)
            except InvalidMessage as error:
                result.invalid.append((events[index], error))
                continue
            seen.add(key)
            if item.timestamp_ignored:
                backend.incr(metrics.INGESTION_TIMESTAMP_IGNORED, tags={"team_id": team.id, "input": item.timestamp_ignored})
            items.append(item)
        return items

    def _record_first_events(self, items: list[PreparedItem], events: Sequence[PluginEvent]) -> None:
        first_events = self.teams.record_first_events({item.row.team_id for item in items if isinstance(item.row, PreparedEvent)})
        if first_events and self._telemetry is not None:
            for team in first_events:
                first = next(item for item in items if item.row.team_id == team.id)
                self._report_first_event(self._telemetry, team, events[first.index])

    def _report_first_event(self, telemetry: Telemetry, team: TeamInfo, event: PluginEvent) -> None:
        properties = event.get("properties") or {}
        try:
            telemetry.first_team_event(
                team, {"sdk": properties.get("$lib"), "realm": properties.get("realm"), "host": properties.get("$host")}
            )
        except Exception:  # noqa: BLE001 -- product telemetry must never stop ingestion
            logger.exception("first-event telemetry failed", extra={"team_id": team.id})

    def _store(self, items: list[PreparedItem], events: Sequence[PluginEvent], result: IngestResult) -> list[PreparedEvent]:
        """Store the items: claims, persons and a transactional sink's rows in one transaction;
        a sink outside Postgres gets the batch (and its person changes) right after the commit.
        Returns the regular events stored."""
        sink = self.sink
        try:
            with transaction.atomic():
                fresh, duplicates = self._claim(items)
                changes = self.persons.apply([item.person_update for item in fresh])
                batch = PreparedBatch()
                for item in fresh:
                    if isinstance(item.row, PreparedEvent):
                        batch.events.append(item.row)
                    else:
                        batch.recordings.append(item.row)
                if sink.transactional:
                    sink.write(batch)
                elif duplicates:
                    # An earlier delivery committed these in Postgres; it may have died
                    # before the sink made them durable: hand them over again, with
                    # their persons as they are now.
                    batch.replayed = [item.row for item in duplicates]
                    refreshed = self.persons.current_changes({(item.row.team_id, item.row.distinct_id) for item in duplicates})
                    changes.updated.extend(refreshed.updated)
                    changes.distinct_ids.extend(refreshed.distinct_ids)
        except (DataError, IntegrityError) as error:
            return self._store_in_halves(items, events, result, error)
        if not sink.transactional:
            batch.persons = changes
            sink.write(batch)
        result.stored.extend(events[item.index]["uuid"] for item in fresh)
        result.duplicates.extend(events[item.index]["uuid"] for item in duplicates)
        return batch.events

    def _store_in_halves(
        self, items: list[PreparedItem], events: Sequence[PluginEvent], result: IngestResult, error: Exception
    ) -> list[PreparedEvent]:
        if len(items) == 1:
            item = items[0]
            logger.warning(
                "the database refused an event: %s", error, extra={"team_id": item.row.team_id, "event_uuid": str(item.row.uuid)}
            )
            result.invalid.append(
                (events[item.index], invalid(Reason.DATABASE_REJECTED, f"The database refused the event: {error}", item.row.team_id))
            )
            return []
        get_metrics().incr(metrics.INGESTION_BATCH_SPLIT)
        middle = len(items) // 2
        return self._store(items[:middle], events, result) + self._store(items[middle:], events, result)

    def _send_webhooks(self, stored: list[PreparedEvent]) -> None:
        # The answer per team is cached 30 s: most batches ask no query here.
        wanted = {team_id for team_id in {row.team_id for row in stored} if self.teams.should_send_webhooks(team_id)}
        hooked = [row for row in stored if row.team_id in wanted]
        if not hooked:
            return
        if self.sink.transactional:  # rows with ids (posthog_event)
            self.webhooks.send([(row.row_id, row.site_url) for row in hooked if row.row_id is not None])
            return
        self.webhooks.send_ee(
            [
                (
                    {
                        "event": row.event,
                        "properties": row.properties,
                        "distinct_id": row.distinct_id,
                        "timestamp": format_iso(row.timestamp),
                        "elements_chain": elements_chain(row.elements),
                    },
                    row.team_id,
                    row.site_url,
                )
                for row in hooked
            ]
        )

    def _claim(self, items: list[PreparedItem]) -> tuple[list[PreparedItem], list[PreparedItem]]:
        """The items whose uuid was not stored before, and those whose uuid was."""
        ordered = sorted(items, key=lambda item: (item.row.team_id, item.row.uuid))  # one lock order for every server
        with connection.cursor() as cursor:
            # Two comma-joined texts: far cheaper to send than arrays of 500 items.
            cursor.execute(
                _CLAIM_UUIDS, [",".join(item.row.uuid for item in ordered), ",".join(str(item.row.team_id) for item in ordered)]
            )
            claimed = {(row[0], row[1]) for row in cursor.fetchall()}
        # Keyed by team and uuid: another team's event reusing a uuid is stored, not skipped.
        fresh = [item for item in items if (item.row.uuid, item.row.team_id) in claimed]
        duplicates = [item for item in items if (item.row.uuid, item.row.team_id) not in claimed]
        return fresh, duplicates
