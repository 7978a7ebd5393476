"""The client's address for ``$ip``: the peer, or what trusted proxies say it was.

PostHog's capture took the first ``X-Forwarded-For`` entry whenever the
header was there, so any client could choose its own ``$ip``. Here the header
is believed only when the peer is one of ``CAPTURE_TRUSTED_PROXIES``; then the
entries are read from the right (the nearest hop first), skipping trusted
proxies, and the first other address is the client's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=16)
def trusted_networks(proxies: tuple[str, ...]) -> tuple[Network, ...]:
    """Parsed ``CAPTURE_TRUSTED_PROXIES`` entries (an address is a one-address network)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in proxies)


def _is_trusted(address: str, networks: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(peer: str | None, forwarded_for: str | None, proxies: tuple[str, ...]) -> str | None:
    """The address to record for a request from ``peer`` carrying ``forwarded_for``."""
    if not proxies or not forwarded_for or not peer:
        return peer
    networks = trusted_networks(proxies)
    if not _is_trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            return hop
    return hops[0] if hops else peer
