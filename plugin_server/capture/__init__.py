"""PostHog's capture API, so that PostHog's SDKs can send events to this server.

The endpoints (``/e/``, ``/i/v0/e/``, ``/capture/``, ``/track/``, ``/batch/``,
``/engage/``, ``/s/``) decode a request body the way PostHog's capture did in
2021 (:mod:`.decode`), resolve the project token to its team (:mod:`.teams`,
cached), check every event and build exactly what PostHog's capture put on the
ingestion queue (:mod:`.batch`), then put the whole request's events on the
queue in one go (:mod:`.queue`: the Celery task on ``PLUGINS_CELERY_QUEUE``, or
the Kafka message on ``KAFKA_CONSUMPTION_TOPIC``). The answer is sent only once
the queue has them; a queue that cannot be reached answers 503 so that the SDK
sends again. ``/decide/`` and ``/flags/`` answer "no feature flags" so that
posthog-js starts cleanly. Served by any WSGI server through the project's
URLconf (:mod:`.urls`) and, with ``CAPTURE_ENABLED``, by ``run_plugin_server``'s
own web server. See docs/capture.md.
"""
