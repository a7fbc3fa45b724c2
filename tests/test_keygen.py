"""The emergency key without a dealer, on real networks (`healthnode testnet --keygen`, one
`healthnode run` per authority): the authorities generate it once they run, a break-glass read
then works, no file of any home and no log line holds the secret, two refreshes keep the key
while shares of two epochs combine to nothing, and a dealer that sends a bad sub-share is shown
wrong by a proven complaint, left out, and break-glass still works.

The secret is reconstructed here from a threshold of the share files, with Lagrange interpolation
written in this file, not the product's, and searched for in every home and log."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from healthnode.crypto import Identity, dkg, threshold
from healthnode.home import keys
from healthnode.home.config import EMERGENCY_SHARE_FILE, KEY_FILE, ROUND_KEY_FILE
from healthnode.protocol.client import SubmitRequest
from healthnode.protocol.tx import (
    EmergencyDeal,
    EmergencyEpochKey,
    EmergencyVerdict,
    EncryptedSubshare,
)
from healthnode.wallet.connection import connect
from tests import wallet_cli as cli
from tests.cluster import CHAIN_ID, Cluster, wait_for

pytestmark = pytest.mark.slow  # four networks that make their key, 32 s: CI runs them (.ci/run)

L = threshold.L


def emergency(cluster: Cluster, index: int) -> dict[str, Any]:
    answer: dict[str, Any] = cluster.admin(index, "emergency")
    return answer


def share_files(cluster: Cluster, nodes: list[int]) -> dict[int, int]:
    """Each node's share, by its index, read from its home."""
    shares = {}
    for i in nodes:
        index, share = keys.load_emergency_share(cluster.homes[i] / EMERGENCY_SHARE_FILE)
        shares[index] = share
    return shares


def interpolate_at_zero(points: dict[int, int]) -> int:
    """Lagrange interpolation at 0 over the field of the group's order, written here."""
    total = 0
    for i, y in points.items():
        numerator, denominator = 1, 1
        for j in points:
            if j != i:
                numerator = numerator * j % L
                denominator = denominator * (j - i) % L
        total = (total + y * numerator * pow(denominator, -1, L)) % L
    return total


def forms(value: int) -> list[bytes]:
    """The ways a 32-byte scalar could sit in a file or a log line."""
    little = value.to_bytes(32, "little")
    found = []
    for raw in (little, little[::-1]):
        found += [raw, raw.hex().encode(), raw.hex().upper().encode(), base64.b64encode(raw),
                  base64.urlsafe_b64encode(raw), base64.b64encode(raw).rstrip(b"=")]
    return found


def files_holding(roots: list[Path], value: int) -> list[str]:
    """Every file under `roots` (homes: LevelDB, blobs, config, keys, logs) that holds
    `value` in any of its forms."""
    wanted = forms(value)
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                if any(form in data for form in wanted):
                    hits.append(str(path))
    return hits


# --- a network that generates its key ----------------------------------------------------------

class Network(cli.People):
    pass


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("keygen")
    cluster = Cluster(root / "net", keygen=True)
    assert cluster.genesis.emergency is None
    assert not any((home / EMERGENCY_SHARE_FILE).exists() for home in cluster.homes)
    cluster.start_all()
    people = Network(cluster, root)
    try:
        yield people
    finally:
        cluster.close()


def test_the_authorities_generate_the_key_and_a_break_glass_read_works(network: Network
                                                                         ) -> None:
    cluster = network.cluster
    key = cli.wait_for_key(cluster, [0, 1, 2, 3])
    assert {cluster.status(i)["emergency"]["public_key"] for i in range(4)} == \
        {key["public_key"]}
    state = emergency(cluster, 0)
    assert state["round"]["purpose"] == "found" and state["round"]["outcome"] == "done"
    assert all(m["dealt"] and m["verdict"] == [] and m["disqualified_by"] is None
               for m in state["members"])
    assert key["threshold"] == 3 and len(key["holders"]) == 4
    # Each node's epoch key is gone with its round.
    assert not any((home / ROUND_KEY_FILE).exists() for home in cluster.homes)
    cli.break_glass_read(network, "K+ 4.1 mmol/L")


def test_no_file_of_any_home_and_no_log_holds_the_secret(network: Network) -> None:
    cluster = network.cluster
    key = cli.wait_for_key(cluster, [0, 1, 2, 3])
    shares = share_files(cluster, [0, 1, 2, 3])
    secret = interpolate_at_zero({i: shares[i] for i in (1, 2, 4)})
    assert threshold.base_mul(secret) == bytes.fromhex(key["public_key"])
    assert interpolate_at_zero({i: shares[i] for i in (1, 2, 3)}) == secret
    homes = [Path(home) for home in cluster.homes]
    assert files_holding([*homes, network.dir], secret) == []
    # The search finds what is there: each share in its own file, and nowhere else.
    for i, home in enumerate(homes):
        _, share = keys.load_emergency_share(home / EMERGENCY_SHARE_FILE)
        assert files_holding(homes, share) == [str(home / EMERGENCY_SHARE_FILE)], i


def test_two_refreshes_keep_the_key_and_shares_of_two_epochs_combine_to_nothing(
        network: Network) -> None:
    cluster = network.cluster
    key = cli.wait_for_key(cluster, [0, 1, 2, 3])
    public_key = bytes.fromhex(key["public_key"])
    epochs = [share_files(cluster, [0, 1, 2, 3])]
    secret = interpolate_at_zero({i: epochs[0][i] for i in (1, 2, 3)})
    epoch = key["epoch"]
    for _ in range(2):
        for i in (0, 1, 2):  # a threshold of holders ask
            cluster.admin(i, "emergency_refresh")
        key = cli.wait_for_key(cluster, [0, 1, 2, 3], after_epoch=epoch)
        epoch = key["epoch"]
        assert bytes.fromhex(key["public_key"]) == public_key
        assert emergency(cluster, 0)["round"]["purpose"] == "refresh"
        epochs.append(share_files(cluster, [0, 1, 2, 3]))
    first, last = epochs[0], epochs[2]
    assert all(first[i] != last[i] for i in first)
    assert interpolate_at_zero({i: last[i] for i in (2, 3, 4)}) == secret
    for mixed in ({1: first[1], 2: first[2], 3: last[3]}, {1: last[1], 2: epochs[1][2],
                                                           4: first[4]}):
        value = interpolate_at_zero(mixed)
        assert value != secret and threshold.base_mul(value) != public_key
    # The old shares are gone from every home; a read works with the current ones.
    homes = [Path(home) for home in cluster.homes]
    for old in (*first.values(), *epochs[1].values()):
        assert files_holding(homes, old) == []
    assert not any((home / ROUND_KEY_FILE).exists() for home in homes)
    cli.break_glass_read(network, "Na+ 139 mmol/L")


# --- a dealer that lies ---------------------------------------------------------------------------

def submit_as(identity: Identity, home: Path, tx: Any) -> None:
    async def main() -> None:
        async with connect(identity, str(home)) as connection:
            await connection.request(SubmitRequest(tx, 0))
    trio.run(main)


def wait_phase(cluster: Cluster, phase: str) -> dict[str, Any]:
    state: dict[str, Any] = wait_for(
        lambda: (s := emergency(cluster, 0))["round"] and s["round"]["phase"] == phase and s,
        60, f"the round's {phase} phase")
    return state


def test_a_dealer_that_sends_a_bad_sub_share_is_left_out_and_break_glass_works(
        tmp_path: Path) -> None:
    """node3's key deals a wrong sub-share to node0 (this test signs as node3, which never
    runs): node0's verdict proves it, the ledger disqualifies the dealing, and the key is made of
    the three others."""
    cluster = Cluster(tmp_path / "net", keygen=True)
    people = cli.People(cluster, tmp_path)
    try:
        for i in (0, 1, 2):
            cluster.start(i)
        for i in (0, 1, 2):
            cluster.wait_ready(i)
        liar = keys.load_identity(cluster.homes[3] / KEY_FILE)
        home = cluster.homes[1]
        number = wait_phase(cluster, "keys")["round"]["number"]
        secret, public = dkg.epoch_keypair()
        submit_as(liar, home, EmergencyEpochKey(
            signer=b"", nonce=1, round=number, public_key=public,
            proof=dkg.epoch_key_proof(secret, CHAIN_ID, number, liar.public_key),
        ).sign(liar, CHAIN_ID))
        state = wait_phase(cluster, "deals")
        recipients = {m["recipient_index"]: bytes.fromhex(m["epoch_key"])
                      for m in state["members"] if m["recipient_index"] is not None}
        assert sorted(recipients) == [1, 2, 3, 4]
        dealing = dkg.deal(None, state["round"]["threshold"], sorted(recipients))
        subshares = []
        for j, epoch_key in sorted(recipients.items()):
            value = dealing.subshares[j] + (1 if j == 1 else 0)  # wrong for node0
            ephemeral, masked, proof = dkg.encrypt_subshare(
                epoch_key, value, dkg.SubshareContext(CHAIN_ID, number, liar.public_key, j))
            subshares.append(EncryptedSubshare(j, ephemeral, masked, proof))
        submit_as(liar, home, EmergencyDeal(signer=b"", nonce=2, round=number,
                                            coefficients=dealing.coefficients,
                                            subshares=tuple(subshares)).sign(liar, CHAIN_ID))
        wait_phase(cluster, "verdicts")
        submit_as(liar, home, EmergencyVerdict(signer=b"", nonce=3, round=number,
                                               complaints=()).sign(liar, CHAIN_ID))
        key = cli.wait_for_key(cluster, [0, 1, 2])
        state = emergency(cluster, 2)
        assert state["round"]["outcome"] == "done"
        members = {m["name"]: m for m in state["members"]}
        assert members["node3"]["disqualified_by"] == cluster.public_keys[0].hex()
        assert members["node0"]["verdict"] == [liar.public_key.hex()]
        assert all(members[n]["disqualified_by"] is None for n in ("node0", "node1", "node2"))
        assert cluster.status(0)["emergency"]["threshold"] == 3 and key["holders"][3] == \
            liar.public_key.hex()
        log = (cluster.homes[0] / "node.log").read_text()
        assert "emergency_round_complaint" in log
        assert json.dumps(state)  # the operator's view is plain JSON
        cli.break_glass_read(people, "troponin 0.02 ng/mL")
    finally:
        cluster.close()
