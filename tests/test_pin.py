"""The wallet's pin beside its key (wallet/trust.py): written and read back, its floor and
trusted head kept across commands, and a damaged or hostile pin file refused with a PinError
naming the file, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from healthnode.crypto import Identity
from healthnode.ledger import light
from healthnode.protocol.genesis import DEFAULT_PARAMS, Authority, Genesis
from healthnode.protocol.schema import replace
from healthnode.wallet import trust

KEYS = tuple(Identity.from_seed(bytes([n]) * 32).public_key for n in range(1, 70))


def _genesis(authorities: int = 4) -> Genesis:
    return Genesis("pin-test", 1, tuple(Authority(f"h{n}", key) for n, key in
                                        enumerate(KEYS[:authorities])), DEFAULT_PARAMS)


def test_a_pin_round_trips_and_keeps_the_higher_head_and_floor(tmp_path: Path) -> None:
    key = tmp_path / "me.key"
    pin = trust.pin_for(key, _genesis(66))  # more authorities than a first version allowed
    assert isinstance(pin, trust.Pin) and trust.pin_path(key).stat().st_mode & 0o777 == 0o600
    later = replace(pin.trusted, height=9, time_ms=5, authorities=KEYS[:65])
    pin.moved_to(later)
    pin.set_pending(trust.Pending(5, b"\x05" * 32, 1_000))
    again = trust.load_pin(trust.pin_path(key))
    assert again is not None and again.pending == trust.Pending(5, b"\x05" * 32, 1_000)
    pin.settled(5, 7)
    again = trust.load_pin(trust.pin_path(key))
    assert again is not None and again.trusted == later and again.floor == 7
    assert again.pending is None and again.settled_nonce == 5
    # Another command that saw less keeps what the file holds.
    stale = trust.Pin.of(_genesis(66), trust.pin_path(key))
    stale.settled(3, 3)
    kept = trust.load_pin(trust.pin_path(key))
    assert kept is not None and kept.floor == 7 and kept.trusted.height == 9
    assert kept.settled_nonce == 5
    # A transaction in flight longer than the pending bound is taken to be dropped.
    kept.set_pending(trust.Pending(6, b"\x06" * 32, 1_000))
    assert kept.pending_now(1_000 + trust.PENDING_TTL_MS) is not None
    assert kept.pending_now(1_001 + trust.PENDING_TTL_MS) is None
    with pytest.raises(trust.PinError, match="is pinned to the network of genesis"):
        trust.pin_for(key, _genesis(5))


@pytest.mark.parametrize("damage", [
    lambda d: "[" * 100_000,  # nested past the parser's recursion
    lambda d: "not json",
    lambda d: json.dumps({**d, "format": 9}),
    lambda d: json.dumps({**d, "genesis_hash": "00" * 32}),
    lambda d: json.dumps({**d, "trusted": {**d["trusted"], "height": True}}),
    lambda d: json.dumps({**d, "trusted": {**d["trusted"], "authorities":
                                           d["trusted"]["authorities"][:1] * 2}}),
    lambda d: json.dumps({**d, "trusted": {**d["trusted"], "state_root": "zz"}}),
    lambda d: json.dumps({**d, "floor": -1}),
])
def test_a_damaged_pin_is_refused_by_name(tmp_path: Path, damage: object) -> None:
    key = tmp_path / "me.key"
    trust.pin_for(key, _genesis())
    path = trust.pin_path(key)
    path.write_text(damage(json.loads(path.read_text())))  # type: ignore[operator]
    with pytest.raises(trust.PinError, match=str(path)):
        trust.load_pin(path)


def test_a_pin_larger_than_its_bound_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "me.key.pin.json"
    path.write_text(" " * (trust.PIN_BYTES_MAX + 1))
    with pytest.raises(trust.PinError):
        trust.load_pin(path)


def test_a_genesis_hash_alone_is_pinned_only_by_a_matching_genesis(tmp_path: Path) -> None:
    key = tmp_path / "me.key"
    genesis = _genesis()
    assert trust.pin_for(key, genesis.hash) == genesis.hash  # to be fetched from a node
    with pytest.raises(trust.PinError, match="hashes to"):
        trust.pin_fetched(key, genesis.hash, _genesis(3))
    pinned = trust.pin_fetched(key, genesis.hash, genesis)
    assert pinned.trusted == light.from_genesis(genesis)
