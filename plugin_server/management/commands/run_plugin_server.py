"""``./manage.py run_plugin_server``: run the plugin server until SIGTERM / SIGINT.

Thin on purpose: settings → :class:`plugin_server.server.Server` → exit code.
``--mode`` picks the parts this process runs (default: PLUGIN_SERVER_MODE,
itself ``all`` by default): ``ingestion``, ``scheduler`` or ``jobs``. With
``INGESTION_PROCESSES`` above one it first forks the template the ingestion
processes are forked from (plugin_server/ingestion/template.py), before it
opens a connection or starts a thread.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import sys
import threading
from argparse import ArgumentParser
from typing import Any, NoReturn

from django.core.management.base import BaseCommand
from django.db import connection

from plugin_server.app_settings import app_setting
from plugin_server.config import ServerConfig, get_config, mask_url
from plugin_server.redis_client import get_redis
from plugin_server.server import MODES, Server, ServerOptions

logger = logging.getLogger(__name__)

IDLE_LOG_INTERVAL = 30.0


def exit_now(code: int) -> NoReturn:
    """End the process once the server has shut down, without the interpreter's teardown.

    By now every batch is stored and acknowledged, the workers are stopped
    and the connections closed. What is left of a normal exit is the
    interpreter freeing a large heap (Django, Celery, the Kafka and
    ClickHouse clients) object by object: 0.5 to 0.9 s of CPU measured, a
    good third of a Ctrl-C's wait, for nothing. The exit handlers still run
    (log handlers flushed, Sentry's queue sent), then the process ends.
    """
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def describe_start(config: ServerConfig, mode: str) -> str:
    """The first line of the server's log: where it takes events from and writes them to (credentials masked)."""
    if config.kafka_enabled:
        source = f"Kafka topic {config.kafka_consumption_topic} on {config.kafka_hosts}"
    else:
        source = f"Celery queue {config.plugins_celery_queue}"
    return (
        f"Starting the plugin server (mode {mode}): events from {source}; Redis {mask_url(config.redis_url)}; "
        f"database {mask_url(config.database_url)}; {config.worker_concurrency} plugin worker"
        f"{'s' if config.worker_concurrency != 1 else ''}"
    )


class Command(BaseCommand):
    help = "Run the plugin server: consume ingestion tasks, run plugins, store events (stops cleanly on SIGTERM/SIGINT)."
    requires_system_checks = "__all__"

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--mode",
            choices=MODES,
            default=None,
            help="run only ingestion, only the scheduler or only plugin jobs (default: PLUGIN_SERVER_MODE, i.e. all)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if app_setting("PLUGIN_SERVER_IDLE"):
            self._idle()
            return
        server_options = ServerOptions.from_settings()
        if options["mode"]:
            server_options = dataclasses.replace(server_options, mode=options["mode"])
        template = None
        if server_options.runs("ingestion") and server_options.ingestion_processes > 1:
            # Before any connection or thread: the ingestion processes are forked from it (template.py).
            from plugin_server.ingestion.template import IngestionTemplate

            template = IngestionTemplate.fork(kafka=server_options.kafka_enabled)
        # Fail before anything starts, with one line (manage.py), when Postgres or Redis is away.
        connection.ensure_connection()
        get_redis().ping()
        logger.info("%s", describe_start(get_config(), server_options.mode))
        exit_now(Server(server_options, ingestion_template=template).run())

    def _idle(self) -> None:
        # PLUGIN_SERVER_IDLE: run, do nothing, say so.
        forever = threading.Event()
        while not forever.wait(IDLE_LOG_INTERVAL):
            logger.info("plugin server idle (PLUGIN_SERVER_IDLE is set)")
