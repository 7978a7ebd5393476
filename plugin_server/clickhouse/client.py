"""clickhouse-driver clients from the CLICKHOUSE_* settings, and what the server can do.

Everything here speaks ClickHouse's native protocol (``CLICKHOUSE_PORT``):
large inserts go as compressed-free column blocks, not SQL text. Under
``CLICKHOUSE_SECURE`` the connection is TLS, verified against
``CLICKHOUSE_CA`` (relative to ``BASE_DIR``) or the system's CAs unless
``CLICKHOUSE_VERIFY`` is off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plugin_server.config import ServerConfig, get_config

if TYPE_CHECKING:
    from clickhouse_driver import Client


def client_options(config: ServerConfig | None = None, database: str | None = None) -> dict[str, Any]:
    """The keyword arguments of ``clickhouse_driver.Client`` for this configuration."""
    config = config or get_config()
    options: dict[str, Any] = {
        "host": config.clickhouse_host or "localhost",
        "port": config.clickhouse_port,
        "database": database or config.clickhouse_database or "default",
        "user": config.clickhouse_user or "default",
        "password": config.clickhouse_password or "",
        "client_name": "plugin-server",
        "connect_timeout": 10,
        "send_receive_timeout": 300,
    }
    if config.clickhouse_secure:
        options["secure"] = True
        options["verify"] = config.clickhouse_verify
        if config.clickhouse_ca:
            options["ca_certs"] = os.path.join(config.base_dir, config.clickhouse_ca)
    return options


def make_client(config: ServerConfig | None = None, database: str | None = None) -> Client:
    """A client on CLICKHOUSE_DATABASE (or ``database``); it connects on first use."""
    from clickhouse_driver import Client

    return Client(**client_options(config, database))


@dataclass(frozen=True, slots=True)
class ServerFeatures:
    """What a ClickHouse server supports that the table definitions depend on."""

    version: str
    datetime64: bool  # DateTime64(6, 'UTC') keeps microseconds (20.1+); else DateTime, whole seconds
    protobuf_input: bool  # the Protobuf input format, for a Kafka table of clickhouse_events_proto
    kafka_engine: bool
    kafka_virtual_columns: bool  # _timestamp / _offset of a Kafka table (19.x+)

    @classmethod
    def of_version(cls, version: str) -> ServerFeatures:
        """What a server of this version supports, when it cannot be asked (printing DDL)."""
        major, minor = (int(part) for part in (version.split(".") + ["0", "0"])[:2])
        return cls(
            version=version,
            datetime64=(major, minor) >= (20, 1),
            protobuf_input=(major, minor) >= (19, 1),
            kafka_engine=True,
            kafka_virtual_columns=(major, minor) >= (19, 1),
        )


def server_features(client: Client) -> ServerFeatures:
    """Ask the server what it supports (its catalogues, not only its version number)."""
    version = str(client.execute("SELECT version()")[0][0])
    types = {row[0] for row in client.execute("SELECT name FROM system.data_type_families")}
    inputs = {row[0] for row in client.execute("SELECT name FROM system.formats WHERE is_input")}
    engines = {row[0] for row in client.execute("SELECT name FROM system.table_engines")}
    return ServerFeatures(
        version=version,
        datetime64="DateTime64" in types,
        protobuf_input="Protobuf" in inputs,
        kafka_engine="Kafka" in engines,
        kafka_virtual_columns=ServerFeatures.of_version(version).kafka_virtual_columns,
    )
