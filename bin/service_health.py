"""Health probes for the Kafka-compatible broker and ClickHouse (used by bin/services).

Usage::

    service_health.py [--wait SECONDS] kafka=HOST:PORT clickhouse=HOST:TCP_PORT:HTTP_PORT ...

Each check prints one line, ``<name> <state> <detail>``, where state is

- ``ok``: the service answered a real request (Kafka: a metadata request
  through confluent-kafka; ClickHouse: ``SELECT 1`` over the native protocol
  with clickhouse-driver and over HTTP);
- ``down``: nothing listens on the port (the caller may start the service);
- ``bad``: something listens but did not answer as the service should.

With ``--wait`` the checks that are not ``ok`` are retried until they are or
the deadline passes. The exit status is 0 when every check is ``ok``, else 1.
Only the ports are touched: no topic, database or table is created.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

# One probe answers (state, detail); state is "ok", "down" or "bad".
Probe = Callable[[], tuple[str, str]]

REQUEST_TIMEOUT = 3.0


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """Split ``host:port`` (an IPv6 host in brackets) into its parts."""
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:
        return address.strip("[]"), default_port
    return host.strip("[]"), int(port)


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def kafka_probe(address: str) -> Probe:
    """A metadata request to the broker at address, as the consumer makes it."""
    host, port = split_host_port(address, 9092)

    def probe() -> tuple[str, str]:
        if not port_open(host, port):
            return "down", f"nothing listens on {host}:{port}"
        # Imported late: `bin/services down` and a failing venv must not need it.
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": f"{host}:{port}", "socket.timeout.ms": 3000})
        try:
            metadata = admin.list_topics(timeout=REQUEST_TIMEOUT)
        except KafkaException as error:
            return "bad", f"{host}:{port} answers but not as a Kafka broker: {error}"
        brokers = ", ".join(str(broker) for broker in metadata.brokers.values())
        return "ok", f"{host}:{port} (brokers {brokers})"

    return probe


def clickhouse_probe(spec: str) -> Probe:
    """SELECT 1 over the native port and over HTTP."""
    host, tcp_port, http_port = spec.rsplit(":", 2)
    host = host.strip("[]")

    def probe() -> tuple[str, str]:
        if not port_open(host, int(tcp_port)):
            return "down", f"nothing listens on {host}:{tcp_port}"
        # Without this the driver builds a 146,000-day date table on import
        # (0.6 s), which is most of the time of a probe.
        os.environ.setdefault("CLICKHOUSE_DRIVER_LASY_DATE_LUT", "1")
        from clickhouse_driver import Client
        from clickhouse_driver.errors import Error as ClickHouseError

        client = Client(host=host, port=int(tcp_port), connect_timeout=3, send_receive_timeout=REQUEST_TIMEOUT)
        try:
            version = client.execute("SELECT version()")[0][0]
        except (ClickHouseError, OSError, EOFError) as error:
            return "bad", f"{host}:{tcp_port} answers but not as ClickHouse: {error!r}"
        finally:
            client.disconnect()
        url = f"http://{host if ':' not in host else f'[{host}]'}:{http_port}/?query=SELECT%201"
        try:
            with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as response:
                body = response.read().strip()
        except (urllib.error.URLError, OSError) as error:
            return "bad", f"native port answers, HTTP {host}:{http_port} does not: {error}"
        if body != b"1":
            return "bad", f"HTTP {host}:{http_port} answered {body[:80]!r} to SELECT 1"
        return "ok", f"{host}:{tcp_port} native, {http_port} http (version {version})"

    return probe


PROBES: dict[str, Callable[[str], Probe]] = {"kafka": kafka_probe, "clickhouse": clickhouse_probe}


def main(argv: list[str]) -> int:
    """Run the checks named on the command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to keep retrying")
    parser.add_argument("checks", nargs="+", metavar="NAME=ADDRESS")
    options = parser.parse_args(argv)
    probes: dict[str, Probe] = {}
    for check in options.checks:
        name, _, address = check.partition("=")
        if name not in PROBES or not address:
            parser.error(f"unknown check {check!r}: use kafka=HOST:PORT or clickhouse=HOST:TCP:HTTP")
        probes[name] = PROBES[name](address)
    deadline = time.monotonic() + options.wait
    results: dict[str, tuple[str, str]] = {}
    while True:
        for name, probe in probes.items():
            if results.get(name, ("",))[0] != "ok":
                results[name] = probe()
        if all(state == "ok" for state, _ in results.values()) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    for name, (state, detail) in results.items():
        print(f"{name} {state} {detail}")
    return 0 if all(state == "ok" for state, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
