"""Peer addresses as configured (`[p2p].peers`, `observers`): the public key that an
address's `/p2p/<peer id>` names, one spelling of an IP address, and the hosts of the
configured peers, whose handshakes have room of their own in the connection budget
(net/budget.py). Names are looked up once, at start."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from healthnode import crypto, logs
from healthnode.errors import ConfigError

log = logs.get_logger("healthnode.net")


def peer_public_key(address: str) -> bytes:
    """The public key named by the `/p2p/<peer id>` part of a peer address."""
    _, sep, peer = address.rpartition("/p2p/")
    if not sep:
        raise ConfigError(f"[p2p].peers {address!r}: the address must end in /p2p/<peer id>")
    try:
        return crypto.public_key_from_peer_id(peer)
    except ValueError as error:
        raise ConfigError(f"[p2p].peers {address!r}: {error}") from None


def known_hosts(addresses: Iterable[str]) -> frozenset[str]:
        """IP addresses of configured authorities and observers: their handshakes have room of
        their own (net/budget.py)."""
        hosts = set()
        for address in addresses:
            parts = address.split("/")
            if len(parts) < 3:
                continue
            if parts[1] in ("ip4", "ip6"):
                hosts.add(normalise_ip(parts[2]))
            elif parts[1] in ("dns", "dns4", "dns6"):
                # A name (compose, a hospital's DNS) is looked up once, at start: a peer whose
                # address moves later competes with strangers until the node restarts.
                try:
                    found = socket.getaddrinfo(parts[2], None, proto=socket.IPPROTO_TCP)
                except OSError:
                    log.warning("peer_name_not_resolved", name=parts[2][:80])
                    continue
                hosts.update(normalise_ip(str(entry[4][0])) for entry in found)
        return frozenset(hosts)


def normalise_ip(text: str) -> str:
    """An IP address in one spelling: IPv6 compressed, an IPv4-mapped IPv6 address as IPv4."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return text
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
