"""Building the dead letters of one source's messages (the consumer's side of :mod:`.dlq`).

A letter keeps the raw message whenever it is known, so that a replay runs
the whole pipeline again; an event whose uuid a plugin changed is kept as it
left the plugins. Nothing here can fail on what a message holds: the error
text of any exception and the encoding of any event are contained.
"""

from __future__ import annotations

from plugin_server import json_codec
from plugin_server.events import Delivery, PluginEvent
from plugin_server.ingestion.dlq import DeadLetterEntry


class Letters:
    """Dead letters of the messages of one source (its name is the letters' ``source``)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def for_delivery(
        self, delivery: Delivery, reason: str, error: str, team_id: int | None = None, event_uuid: str | None = None
    ) -> DeadLetterEntry:
        return DeadLetterEntry(self.source, delivery.queue, reason, error, delivery.payload, team_id, event_uuid)

    def for_event(
        self, event: PluginEvent, by_uuid: dict[str, Delivery], reason: str, error: str, team_id: int | None = None
    ) -> DeadLetterEntry:
        """The letter of an event, found back to its message by uuid."""
        event_uuid = event.get("uuid")
        delivery = by_uuid.get(str(event_uuid))
        team = team_id if team_id is not None else _int_or_none(event.get("team_id"))
        if delivery is not None:
            return self.for_delivery(delivery, reason, error, team, str(event_uuid))
        # A plugin changed the uuid: keep the event as it left the plugins.
        try:
            payload = json_codec.dumps_text(event).encode("utf-8", "replace")
        except (ValueError, TypeError, RecursionError) as encode_error:
            payload = f"(the event could not be encoded: {type(encode_error).__name__})".encode()
        return DeadLetterEntry(self.source, "", reason, error, payload, team, str(event_uuid) if event_uuid else None)


def error_text(error: BaseException) -> str:
    """``Type: message`` of an error, never failing itself (a message can be huge or unprintable)."""
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 -- an exception whose str() raises is still an error to record
        text = "(no message)"
    return f"{type(error).__name__}: {text[:2000]}"


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
