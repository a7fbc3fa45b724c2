"""Readiness and signer liveness (node/health.py), as pure rules; the probes of real processes
are checked in tests/test_network_namespaces.py and tests/test_network.py."""

from __future__ import annotations

from healthnode.node.health import (
    LOOP_STALE_MS,
    READY_MARGIN_MS,
    Probes,
    SignerLiveness,
    readiness,
)
from healthnode.protocol.block import Block, CommitCertificate, CommitSig, Header

KEYS = [bytes([i]) * 32 for i in range(4)]
HEARTBEAT_MS = 5_000


def ready(**changes: object) -> tuple[bool, tuple[str, ...]]:
    facts: dict[str, object] = {"authorities": KEYS, "own_key": KEYS[0],
                                "connected": KEYS[1:3], "syncing": False,
                                "head_time_ms": 100_000, "now_ms": 101_000,
                                "heartbeat_ms": HEARTBEAT_MS}
    state = readiness(**{**facts, **changes})  # type: ignore[arg-type]
    return state.ready, state.reasons


def test_a_node_linked_to_a_quorum_with_a_fresh_head_is_ready() -> None:
    assert ready() == (True, ())


def test_each_missing_condition_is_named() -> None:
    assert ready(connected=KEYS[1:2])[1] == ("linked to 2 of the 3 authorities a quorum needs",)
    assert ready(syncing=True)[1] == ("catching up by block sync",)
    stale = 100_000 + HEARTBEAT_MS + READY_MARGIN_MS + 1_000
    assert not ready(now_ms=stale)[0] and "the head is 16 s old" in ready(now_ms=stale)[1][0]
    assert ready(now_ms=stale - 2_000)[0]  # within the heartbeat and the margin


def test_an_observer_counts_only_the_authorities_it_is_linked_to() -> None:
    observer = b"\xff" * 32
    assert not ready(own_key=observer)[0]  # two authorities: not a quorum of four
    assert ready(own_key=observer, connected=KEYS[:3])[0]


def test_a_loop_that_stops_stamping_is_not_alive_and_not_ready() -> None:
    now = [100.0]
    probes = Probes(monotonic=lambda: now[0])
    assert probes.alive() == (False, "starting")
    probes.beat(readiness(authorities=KEYS, own_key=KEYS[0], connected=KEYS, syncing=False,
                          head_time_ms=1_000, now_ms=1_000, heartbeat_ms=HEARTBEAT_MS))
    now[0] += 1
    assert probes.alive()[0] and probes.ready()[0]
    now[0] += LOOP_STALE_MS / 1000
    assert not probes.alive()[0]
    is_ready, state = probes.ready()
    assert not is_ready and state["reasons"][0].startswith("the event loop has not answered")


def _decided(height: int, round_: int, proposer: int,
             signers: list[int]) -> tuple[Block, CommitCertificate]:
    header = Header("c", height, 1, bytes(32), None, bytes(32), bytes(32), bytes(32), bytes(32),
                    KEYS[proposer])
    block = Block(header, (), ())
    sigs = tuple(CommitSig(KEYS[i], bytes(64)) for i in signers)
    return block, CommitCertificate(height, round_, block.hash, sigs)


def test_a_stopped_authority_misses_its_precommits_and_its_proposal_turns() -> None:
    liveness = SignerLiveness()
    for height in range(1, 9):
        proposer = height % 4
        round_ = 1 if proposer == 3 else 0  # node 3 is stopped: its turn times out
        decided_by = (height + round_) % 4
        block, certificate = _decided(height, round_, decided_by, [0, 1, 2])
        liveness.block_committed(block, certificate, KEYS)
    stopped = liveness.by_key[KEYS[3]]
    assert (stopped.proposals, stopped.precommits, stopped.last_precommit_height) == (2, 8, None)
    assert all(liveness.by_key[KEYS[i]].proposals == 0 for i in range(3))
    assert liveness.by_key[KEYS[0]].last_precommit_height == 8


def test_a_precommit_missing_from_the_certificate_is_missed() -> None:
    """The certificate is what the chain keeps: a precommit that came too late to be in it
    counts as missed (as CometBFT counts the last commit's absent signatures)."""
    liveness = SignerLiveness()
    block, certificate = _decided(1, 0, 1, [1, 2, 3])
    assert liveness.block_committed(block, certificate, KEYS) == [(KEYS[0], "precommit")]
