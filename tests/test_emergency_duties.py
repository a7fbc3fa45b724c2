"""Each node's part in the emergency key's rounds (node/emergency.py, `EmergencyDuties`), its
real code with real files, over a ledger in memory: the nodes post, deal, judge and take up
their shares by themselves, block after block. A submitter stands in for the mempool (it checks
each transaction against the ledger as admission does); test_keygen.py runs the same code in
real `healthnode run` processes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from healthnode.crypto import Identity, threshold
from healthnode.errors import TxRefused
from healthnode.home import keys
from healthnode.ledger import rules
from healthnode.ledger.rules import rounds
from healthnode.node.emergency import EmergencyDuties
from healthnode.protocol.tx import AnyTx, EmergencyRefresh
from tests.chain import AUTHORITIES, CHAIN_ID, World, make_genesis

A0, A1, A2, A3 = AUTHORITIES


class Pool:
    """The transactions the nodes submitted, for the next block."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.waiting: list[AnyTx] = []

    def submitter(self, identity: Identity) -> PoolSubmitter:
        return PoolSubmitter(self, identity)


class PoolSubmitter:
    def __init__(self, pool: Pool, identity: Identity) -> None:
        self.pool, self.identity = pool, identity

    def is_waiting(self, tx_hash: bytes) -> bool:
        return any(tx.hash == tx_hash for tx in self.pool.waiting)

    def submit_own(self, build: Callable[[int], AnyTx]) -> AnyTx:
        world = self.pool.world
        nonce = world.nonces.get(self.identity.public_key, 0) + 1
        tx = build(nonce).sign(self.identity, CHAIN_ID)
        refusal = world.check(tx)
        if refusal is not None:
            raise TxRefused(str(refusal.reason), refusal.detail)
        world.nonces[self.identity.public_key] = nonce
        self.pool.waiting.append(tx)
        return tx


def start_nodes(world: World, root: Path, who: Sequence[Identity], pool: Pool
                ) -> list[EmergencyDuties]:
    duties = []
    for member in who:
        home = root / member.public_key.hex()[:8]
        home.mkdir(mode=0o700, exist_ok=True)
        node = EmergencyDuties(world.state, member, pool.submitter(member),  # type: ignore[arg-type]
                               home / "emergency_share.json", refresh_blocks=0)
        node.start()
        duties.append(node)
    return duties


def block(world: World, nodes: Sequence[EmergencyDuties], pool: Pool) -> None:
    """A block of what the nodes submitted; then each node sees it committed."""
    txs, pool.waiting = pool.waiting, []
    world.commit(*txs, advance_ms=5000)  # an idle network's heartbeat
    for node in nodes:
        node.block_committed(world.blocks[-1][0])


def test_four_nodes_generate_the_key_and_keep_no_epoch_key(tmp_path: Path) -> None:
    world = World(make_genesis(emergency=False))
    pool = Pool(world)
    nodes = start_nodes(world, tmp_path, AUTHORITIES, pool)
    block(world, nodes, pool)  # block 1: the round opens at its end
    for _ in range(4):
        block(world, nodes, pool)
    key = rules.emergency_key(world.state)
    assert key is not None and all(node.share is not None for node in nodes)
    assert not any(node.round_key_path.exists() for node in nodes)
    for node in nodes:
        index, share = keys.load_emergency_share(node.path)
        assert node.share == (index, share)


def test_a_node_that_never_starts_leaves_the_others_a_working_key_and_no_crash(
        tmp_path: Path) -> None:
    """A3's node never runs. The keys phase waits, then the three make the key; the re-sharing
    that would bring A3 in waits its retry time and goes on without it, and nothing raises, in
    a running node or in one that starts again."""
    world = World(make_genesis(emergency=False))
    pool = Pool(world)
    nodes = start_nodes(world, tmp_path, (A0, A1, A2), pool)
    for _ in range(rounds.ROUND_PHASE_BLOCKS + 4):
        block(world, nodes, pool)
    key = rules.emergency_key(world.state)
    assert key is not None and len(key.key.commitments) == 3
    shares = [node.share for node in nodes]
    assert all(share is not None for share in shares)
    for _ in range(rounds.ROUND_RETRY_BLOCKS + rounds.ROUND_PHASE_BLOCKS + 2):
        block(world, nodes, pool)
    # The re-sharing went on without A3 too, after its retry time: new shares of the same key.
    found = rounds.current_round(world.state)
    assert found is not None and (found.number, found.purpose, found.outcome) == \
        (2, "reshare", rounds.DONE)
    now = rules.emergency_key(world.state)
    assert now is not None and now.key.public_key == key.key.public_key
    assert len(now.key.commitments) == 3 and now.epoch > key.epoch
    assert all(node.share is not None and node.share != old
               for node, old in zip(nodes, shares, strict=True))
    again = start_nodes(world, tmp_path, (A0,), pool)[0]  # a restart
    assert again.share == nodes[0].share


def test_a_refresh_replaces_every_share_file_and_deletes_the_old_share(tmp_path: Path) -> None:
    world = World(make_genesis(emergency=False))
    pool = Pool(world)
    nodes = start_nodes(world, tmp_path, AUTHORITIES, pool)
    for _ in range(5):
        block(world, nodes, pool)
    key = rules.emergency_key(world.state)
    assert key is not None
    before = [node.share for node in nodes]
    world.commit(*[world.tx(EmergencyRefresh, a, epoch=key.epoch) for a in (A0, A1, A2)])
    for node in nodes:
        node.block_committed(world.blocks[-1][0])
    for _ in range(4):
        block(world, nodes, pool)
    after = rules.emergency_key(world.state)
    assert after is not None and after.epoch > key.epoch
    assert after.key.public_key == key.key.public_key
    assert all(node.share is not None and node.share != old
               for node, old in zip(nodes, before, strict=True))
    for node, old in zip(nodes, before, strict=True):
        assert old is not None
        assert threshold.scalar_bytes(old[1]).hex() not in node.path.read_text()
        assert not node.round_key_path.exists()
