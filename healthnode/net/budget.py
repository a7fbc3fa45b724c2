"""The connection budget of a node, sans-IO: who may hold how many connections at once.

Theory of operation
-------------------
A hospital's node must stay reachable by the other authorities whatever wallets and strangers do,
and a wallet must be turned away with a reason rather than hang. Every inbound connection goes
through two gates, and every slot it takes is given back when it ends (`net/p2p.py` owns the I/O
and calls `release` from a `finally`):

1. **Handshake** (before Noise, the peer is only an IP address): at most `handshakes_max` at once,
   and `handshakes_per_ip_max` from one address, each for at most the handshake timeout (the shell
   enforces it). Addresses of configured authorities and observers (`known_hosts`) have room of
   their own (`known_host_handshakes_max`, at most `known_host_handshakes_per_ip_max` for one
   address), so a flood of half-open strangers cannot delay an authority's reconnect. A host that
   shares an authority's address (its NAT, its server) competes with it for that address's share:
   the limit of what an address can say about who is behind it.
2. **Admission** (after Noise, the peer's key is proven):
   - `authority` and `observer` keys are always admitted: their room is reserved. A peer that
     redials before its old connection is noticed dead may briefly hold several; the shell keeps
     at most `authority_connections_per_key_max` and closes the oldest beyond that.
   - any other key is a `wallet` (patients and providers are unregistered keys): at most
     `wallets_max` at once, `wallets_per_ip_max` from one address and `wallets_per_key_max` for
     one key. A wallet over a limit is refused with the limit's name (`wallets_full`,
     `wallets_per_ip`, `wallets_per_key`); the client protocol then answers it `node_busy`, and
     the wallet tries another node.

The counts are plain dictionaries that drop a key when its count reaches zero, so the budget's
own memory is bounded by the connections open now, not by the peers ever seen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final


class Kind(StrEnum):
    """Who is at the other end of a connection (a bounded label set for metrics)."""

    AUTHORITY = "authority"
    OBSERVER = "observer"
    WALLET = "wallet"
    STRANGER = "stranger"  # still in its handshake: only its IP address is known


KINDS: Final = tuple(Kind)


@dataclass(frozen=True, slots=True)
class Limits:
    """Every limit of the budget, with its unit. Defaults suit a hospital node on 2 cores."""

    handshakes_max: int = 64  # unauthenticated connections in their handshake at once
    handshakes_per_ip_max: int = 16
    known_host_handshakes_max: int = 64  # room kept for authorities' and observers' addresses
    # ... of it for one address: a flood from a host that shares an authority's address (its
    # NAT, its server) cannot take all of it.
    known_host_handshakes_per_ip_max: int = 16
    handshake_timeout_ms: int = 5_000  # Noise and yamux must be done by then
    wallets_max: int = 128  # authenticated non-authority connections at once
    wallets_per_ip_max: int = 64  # a hospital's wallets may share one NAT address
    wallets_per_key_max: int = 8  # one command holds one; break-glass and scripts a few more
    authority_connections_per_key_max: int = 4  # simultaneous dials leave two per pair
    idle_timeout_ms: int = 60_000  # a wallet connection with no open stream this long is closed
    wallet_streams_max: int = 4  # client requests at once on one wallet connection


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted connection's slot; hand it back with `ConnectionBudget.release`."""

    kind: Kind
    ip: str
    key: bytes


class ConnectionBudget:
    def __init__(self, limits: Limits, known_hosts: frozenset[str] = frozenset()) -> None:
        self.limits = limits
        self.known_hosts = known_hosts
        self._handshakes: Counter[str] = Counter()
        self._known_handshakes: Counter[str] = Counter()
        self._wallets_by_ip: Counter[str] = Counter()
        self._wallets_by_key: Counter[bytes] = Counter()
        self.admitted: Counter[Kind] = Counter()

    # --- gate 1: the handshake --------------------------------------------------------------

    def start_handshake(self, ip: str) -> str | None:
        """Take a handshake slot for `ip`; None if taken, else the refusal reason."""
        if ip in self.known_hosts:
            # Full for either reason is "full": a known host's connection waits for a slot.
            if (self.known_handshaking >= self.limits.known_host_handshakes_max
                    or self._known_handshakes[ip] >= self.limits.known_host_handshakes_per_ip_max):
                return "handshakes_full"
            self._known_handshakes[ip] += 1
            return None
        if self.handshaking >= self.limits.handshakes_max:
            return "handshakes_full"
        if self._handshakes[ip] >= self.limits.handshakes_per_ip_max:
            return "handshakes_per_ip"
        self._handshakes[ip] += 1
        return None

    def end_handshake(self, ip: str) -> None:
        """Give back the slot of a handshake that `start_handshake` admitted (done or failed)."""
        if ip in self.known_hosts:
            assert self._known_handshakes[ip] > 0, "a handshake slot given back twice"
            _decrement(self._known_handshakes, ip)
            return
        assert self._handshakes[ip] > 0, "a handshake slot given back twice"
        _decrement(self._handshakes, ip)

    @property
    def handshaking(self) -> int:
        """Handshakes in progress from addresses that are not known hosts (strangers)."""
        return self._handshakes.total()

    @property
    def known_handshaking(self) -> int:
        """Handshakes in progress from the addresses of configured authorities and observers."""
        return self._known_handshakes.total()

    # --- gate 2: admission after Noise -----------------------------------------------------

    def admit(self, kind: Kind, ip: str, key: bytes) -> Admission | str:
        """A slot for an authenticated connection, or the name of the limit it hit."""
        assert kind is not Kind.STRANGER
        if kind is Kind.WALLET:
            if self.admitted[Kind.WALLET] >= self.limits.wallets_max:
                return "wallets_full"
            if self._wallets_by_ip[ip] >= self.limits.wallets_per_ip_max:
                return "wallets_per_ip"
            if self._wallets_by_key[key] >= self.limits.wallets_per_key_max:
                return "wallets_per_key"
            self._wallets_by_ip[ip] += 1
            self._wallets_by_key[key] += 1
        self.admitted[kind] += 1
        return Admission(kind, ip, key)

    def release(self, admission: Admission) -> None:
        assert self.admitted[admission.kind] > 0, "a connection slot given back twice"
        _decrement(self.admitted, admission.kind)
        if admission.kind is Kind.WALLET:
            _decrement(self._wallets_by_ip, admission.ip)
            _decrement(self._wallets_by_key, admission.key)

    def tracked_keys(self) -> int:
        """Entries held by the per-IP and per-key tables (bounded by open connections)."""
        return (len(self._handshakes) + len(self._known_handshakes) + len(self._wallets_by_ip)
                + len(self._wallets_by_key))


def _decrement(counter: Counter[Any], key: Any) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
