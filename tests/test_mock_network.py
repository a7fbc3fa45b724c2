"""A whole network of real nodes under trio's MockClock: partition and heal in seconds.

Four `Node`s, each with its own home and LevelDB store (made by `make_testnet`, as for the
processes of tests/cluster.py), run in one trio run on tests/memory_net.py's streams. Only the
transport and time are simulated: the node's clock is a TrioClock, so block times, timeouts,
pings and redials all move with the virtual clock, which jumps whenever every task waits
(`autojump_clock`). Minutes of a network's life take seconds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import trio

from healthnode.clock import TrioClock, now_ms
from healthnode.crypto import Identity
from healthnode.home import config
from healthnode.home.layout import make_testnet
from healthnode.node.daemon import Node
from healthnode.protocol.tx import EmergencyPolicy
from healthnode.protocol.wire import PROTOCOL_VERSION, Hello
from tests.memory_net import MemoryNetwork

NODES = 4


def _homes(root: Path, epoch_ms: int) -> list[Path]:
    _genesis, homes = make_testnet(NODES, root, base_port=20000, now_ms=epoch_ms)
    for home in homes:
        node_config = config.load_config(home.path)
        config.write_config(dataclasses.replace(
            node_config, metrics=dataclasses.replace(node_config.metrics, enabled=False)),
            home.path)
    return [home.path for home in homes]


async def _until(condition: Callable[[], bool], within_s: float) -> None:
    with trio.fail_after(within_s):
        while not condition():
            await trio.sleep(0.1)


def _heights(nodes: list[Node]) -> list[int]:
    return [node.store.head.height for node in nodes]


def _agree(nodes: list[Node]) -> None:
    """Every height that two nodes both finalized holds the same block on both."""
    for height in range(1, min(_heights(nodes)) + 1):
        hashes = {node.store.block(height).hash for node in nodes}  # type: ignore[union-attr]
        assert len(hashes) == 1, f"nodes disagree at height {height}"


async def test_partition_and_heal_under_mock_clock(tmp_path: Path,
                                                   autojump_clock: trio.testing.MockClock) -> None:
    started = time.monotonic()
    epoch_ms = now_ms()
    network = MemoryNetwork()
    clock = TrioClock(epoch_ms)
    nodes = [Node(home, clock=clock, make_transport=network.transport)
             for home in _homes(tmp_path, epoch_ms)]
    keys = [node.identity.public_key for node in nodes]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        await _until(lambda: min(_heights(nodes)) >= 3, within_s=60)

        # One node cut off: the other three (a quorum) go on; it stands still.
        network.partition({keys[3]}, set(keys[:3]))
        alone_at = nodes[3].store.head.height
        majority_at = max(_heights(nodes[:3]))
        await _until(lambda: min(_heights(nodes[:3])) >= majority_at + 5, within_s=120)
        assert nodes[3].store.head.height <= alone_at + 1  # a commit already in flight at most

        # Healed: node 3 catches up by block sync, and the four finalize together again.
        network.heal()
        top = max(_heights(nodes))
        await _until(lambda: min(_heights(nodes)) >= top + 2, within_s=120)
        _agree(nodes)

        # Two and two: no side has a quorum, so nothing is finalized anywhere.
        network.partition(set(keys[:2]), set(keys[2:]))
        await trio.sleep(10)  # what was in flight settles
        stalled = max(_heights(nodes))
        await trio.sleep(60)
        assert max(_heights(nodes)) == stalled

        # A patient's transaction sent to one side meanwhile waits there for the heal.
        patient = Identity.generate()
        policy = EmergencyPolicy(signer=b"", nonce=1, allowed_tags=(), wraps=()).sign(
            patient, nodes[0].genesis.chain_id)
        assert nodes[0].submitter.admit(policy) is None
        await trio.sleep(20)
        assert all(node.store.tx_location(policy.hash) is None for node in nodes)

        # Healed: the links come back by the nodes' own pings and redials, and the transaction
        # is finalized on all four.
        network.heal()
        top = max(_heights(nodes))
        await _until(lambda: min(_heights(nodes)) >= top + 3, within_s=120)
        _agree(nodes)
        await _until(lambda: all(node.store.tx_location(policy.hash) is not None
                                 for node in nodes), within_s=60)
        assert autojump_clock.current_time() > 90  # minutes of the network's life
        nursery.cancel_scope.cancel()
    assert network.bugs == []
    # Minutes of the network's life, in seconds of the test's (loose: a busy machine is slow).
    assert time.monotonic() - started < 120


class _NextRelease(Node):
    """A node of a release that speaks the next protocol version."""

    def _build(self) -> None:
        super()._build()
        self.gossip.hello = Hello(PROTOCOL_VERSION + 1, self.genesis.hash).encode()


async def test_a_peer_of_another_protocol_version_is_refused_on_both_sides(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    epoch_ms = now_ms()
    network = MemoryNetwork()
    clock = TrioClock(epoch_ms)
    homes = _homes(tmp_path, epoch_ms)
    nodes = [Node(home, clock=clock, make_transport=network.transport) for home in homes[:3]]
    newer = _NextRelease(homes[3], clock=clock, make_transport=network.transport)
    async with trio.open_nursery() as nursery:
        for node in [*nodes, newer]:
            await nursery.start(node.run)
        await _until(lambda: min(_heights(nodes)) >= 3, within_s=120)  # three: still a quorum
        assert newer.gossip.connected() == []
        assert all(newer.identity.public_key not in node.gossip.connected() for node in nodes)
        refused = [node.metrics.rejected_messages.labels("peer_protocol")._value.get()
                   for node in [*nodes, newer]]
        assert all(count > 0 for count in refused), refused  # each side said why
        nursery.cancel_scope.cancel()
    assert newer.store.head.height == 0
