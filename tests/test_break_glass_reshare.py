"""A hospital leaves, and the break-glass key is re-shared when the authority set changes, on a
real 4-node network: the remaining authorities vote one out, the removed node (still running)
signs nothing from its removal height and deletes its share file, the share holders re-deal their
shares on chain, the new set takes up new shares of the same key (never assembled), and an
emergency read still works (docs/operations.md, "Leaving a network")."""

from __future__ import annotations

from pathlib import Path

from healthnode.home.config import EMERGENCY_SHARE_FILE
from healthnode.home.keys import load_emergency_share
from tests import wallet_cli as cli
from tests.cluster import Cluster, wait_for


def test_the_key_moves_to_the_new_authority_set_and_old_wraps_still_open(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "net")
    try:
        cluster.start_all()
        patient, er = tmp_path / "patient.key", tmp_path / "er.key"
        pin = ("--genesis", str(cluster.genesis_file))
        cli.ok("patient", "new", "--out", str(patient), *pin)
        er_public = cli.ok("provider", "new", "--out", str(er), *pin)["public_key"]
        done = cluster.admin(1, "provider_register", provider=er_public,
                             roles=["emergency"], display_name="Dr ER")
        cluster.wait_final([done["tx_hash"]], [0, 1, 2, 3], 30)
        home = [str(h) for h in cluster.homes]
        cli.ok("emergency", "allow", "--node", home[0], "--as", str(patient), "--category",
            "allergy")
        source = tmp_path / "allergy.txt"
        source.write_text("latex allergy")
        record = cli.ok("record", "add", "--node", home[0], "--as", str(patient), "--patient",
                     str(patient), "--category", "allergy", str(source))["record_id"]
        before = cluster.status(0)["emergency"]
        old_shares = [load_emergency_share(h / EMERGENCY_SHARE_FILE) for h in cluster.homes]

        removed = cluster.public_keys[3].hex()
        for index in (0, 1, 2):
            cluster.admin(index, "validator_propose", action="remove", subject=removed)
        remaining = [key.hex() for key in cluster.public_keys[:3]]

        def moved_key() -> dict[str, object] | None:
            emergency: dict[str, object] = cluster.status(0)["emergency"]
            return emergency if emergency["holders"] == remaining else None

        moved = wait_for(moved_key, 60, "the emergency key to move to three holders")
        assert moved["public_key"] == before["public_key"]  # the same key, re-shared
        assert moved["epoch"] > before["epoch"] and moved["threshold"] == 3
        for index in (0, 1, 2):
            wait_for(lambda i=index: cluster.status(i)["emergency"]["my_index"] == i + 1, 30,
                     f"node{index} to take up its new share")
            new_share = load_emergency_share(cluster.homes[index] / EMERGENCY_SHARE_FILE)
            assert new_share != old_shares[index]

        # The removed node, still running, signs nothing from the height it left at, and
        # deletes its share file; the others go on.
        def without_node3() -> int | None:
            authorities = cluster.admin(0, "validators")["authorities"]
            return authorities["from_height"] if len(authorities["members"]) == 3 else None

        gone_from = wait_for(without_node3, 30, "the set without node3")
        wait_for(lambda: cluster.height(0) >= gone_from + 3, 60, "blocks after the removal")
        assert 3 in cluster.running()
        for height in range(gone_from, cluster.height(0) + 1):
            signers = {s["public_key"] for s in cluster.admin(0, "certificate",
                                                                height=height)["signers"]}
            assert removed not in signers and len(signers) == 3, height
        wait_for(lambda: not (cluster.homes[3] / EMERGENCY_SHARE_FILE).exists(), 30,
                 "node3 to delete its share file")

        out = tmp_path / "read.txt"
        read = cli.ok("record", "get", "--node", home[1], "--as", str(er), record, "--out",
                   str(out), "--break-glass")
        assert out.read_text() == "latex allergy"
        assert read["shares_from"] == [1, 2, 3]
    finally:
        cluster.close()
