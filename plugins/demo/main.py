"""Demo plugin: adds a greeting property to each event and can drop events by name.

Shows the plugin API (docs/plugins.md): setup_plugin prepares meta.global_,
process_event changes or drops an event, run_every_minute uses meta.cache.
"""


def setup_plugin(meta):
    skipped = meta.config.get("skip_events") or ""
    meta.global_["skip"] = [name.strip() for name in skipped.split(",") if name.strip()]
    print("demo plugin set up, dropping events:", meta.global_["skip"])


def process_event(event, meta):
    if event.get("event") in meta.global_["skip"]:
        return None
    greeting = meta.config.get("greeting") or "Hello from the demo plugin"
    if meta.config.get("style") == "shout":
        greeting = greeting.upper()
    properties = event.get("properties") or {}
    properties[meta.config.get("property_name") or "greeting"] = greeting
    event["properties"] = properties
    meta.cache.incr("events_seen")
    return event


def run_every_minute(meta):
    print("demo plugin has seen", meta.cache.get("events_seen", 0), "events")
