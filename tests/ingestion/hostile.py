"""Hostile and malformed Celery messages, built the way a broken or malicious producer would.

Celery's own client cannot serialise some of them (JSON 10,000 levels deep
makes its encoder recurse too): those are pushed as raw envelopes, exactly
the bytes kombu would have written around such a body.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone
from typing import Any

TASK = "posthog.tasks.process_event.process_event_with_plugins"


def deep_json(levels: int, leaf: str = "1") -> str:
    """JSON text of ``levels`` arrays nested in each other (built as text: nothing recurses)."""
    return "[" * levels + leaf + "]" * levels


def raw_envelope(body_text: str, task: str = TASK, task_id: str | None = None, compression: str | None = None, body: bytes | None = None) -> bytes:
    """A kombu Redis-transport envelope (protocol 2) around ``body_text``, as kombu lays it out."""
    headers: dict[str, Any] = {"lang": "py", "task": task, "id": task_id or str(uuid.uuid4()), "retries": 0}
    if compression:
        headers["compression"] = compression
    envelope = {
        "body": base64.b64encode(body if body is not None else body_text.encode("utf-8", "surrogatepass")).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": headers["id"],
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "q"},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


def task_body_text(data_text: str, team_id_text: str, distinct_id_text: str = '"hostile"') -> str:
    """The protocol 2 body ``[args, kwargs, embed]`` with ``data`` and ``team_id`` given as raw JSON text."""
    now = json.dumps(datetime.now(timezone.utc).isoformat())
    args = f'[{distinct_id_text}, "127.0.0.1", "http://localhost", {data_text}, {team_id_text}, {now}, null]'
    return f'[{args}, {{}}, {{"callbacks": null, "errbacks": null, "chain": null, "chord": null}}]'


def deep_event_messages(team_id: int, levels: int) -> dict[str, bytes]:
    """One message per place a deep structure can hide: properties, event name, $set, the envelope itself."""
    deep = deep_json(levels)
    return {
        "properties": raw_envelope(task_body_text(f'{{"event": "deep", "properties": {{"x": {deep}}}}}', str(team_id))),
        "event_name": raw_envelope(task_body_text(f'{{"event": {deep}, "properties": {{}}}}', str(team_id))),
        "set": raw_envelope(task_body_text(f'{{"event": "$identify", "properties": {{}}, "$set": {{"a": {deep}}}}}', str(team_id))),
        "envelope": ('{"body": "", "headers": ' + deep + ', "properties": {}}').encode(),
    }
