"""A fifth hospital joins a running 4-hospital network by the runbook alone (docs/operations.md,
"Joining a network"), with no config edit and no restart of the other four: it makes its own
key and home, one authority vouches for it as an observer, it syncs and announces where it can
be dialled, the authorities vote it in, it signs blocks, and the re-sharing of the emergency key
gives it a share that a break-glass read uses. Voting it in before it has synced is refused
without `force`.

The four run from `healthnode testnet` (their config lists each other); the fifth's config
names one of them as its only seed. Every command is one a hospital's operator runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from healthnode.admin.client import AdminError
from healthnode.home import config
from healthnode.home.layout import METRICS_PORT_OFFSET, free_base_port
from healthnode.tools.launcher import NodeProcess
from tests import wallet_cli as cli
from tests.cluster import Cluster, wait_for


def newcomer_home(root: Path, cluster: Cluster) -> tuple[Path, str]:
    """Steps 1 and 2 of the runbook at the fifth hospital: its own key, `init` with the
    network's genesis and that key, one seed, where it listens; its public key."""
    root.mkdir(mode=0o700)
    key = root / "node_key.json"
    cli.ok("keys", "new", "--kind", "node", "--out", str(key))
    home = root / "home"
    init = cli.ok("init", "--home", str(home), "--genesis", str(cluster.genesis_file),
                  "--key", str(key))
    assert init["name"] == "observer" and init["genesis_hash"] == cluster.genesis.hash.hex()
    port = free_base_port(1)
    seed = config.load_config(cluster.homes[0]).p2p.listen[0] + \
        f"/p2p/{cluster.status(0)['peer_id']}"
    node_config = config.load_config(home)
    config.write_config(dataclasses.replace(
        node_config,
        p2p=dataclasses.replace(node_config.p2p, listen=(f"/ip4/127.0.0.1/tcp/{port}",),
                                peers=(seed,), dial_local=True),  # all on this machine
        metrics=dataclasses.replace(node_config.metrics,
                                    listen=f"127.0.0.1:{port + METRICS_PORT_OFFSET}")), home)
    return home, init["public_key"]


def vouched_newcomer(cluster: Cluster, home: Path, subject: str, name: str,
                     sponsor: int) -> NodeProcess:
    """Step 3 of the runbook: authority `sponsor` vouches for the newcomer as an observer (final
    before this returns); the newcomer's node, adopted by the cluster, not started yet."""
    cli.ok("admin", "--home", str(cluster.homes[sponsor]), "observer_add", "--param",
           f"subject={subject}", "--param", f"name={name}", "--param", "wait=true")
    node = NodeProcess(home)
    cluster.nodes.append(node)
    cluster.homes.append(home)
    cluster.public_keys.append(bytes.fromhex(subject))
    return node


def vote_in_and_see_it_sign(cluster: Cluster, fifth: str) -> None:
    """Steps 4 and 5 of the runbook: three of the four authorities vote the fifth in, each
    after checking that it is linked and synced; then its signature is in a certificate."""
    for i in (0, 1, 2):
        cli.ok("admin", "--home", str(cluster.homes[i]), "validator_propose", "--param",
               "action=add", "--param", f"subject={fifth}", "--param", "name=fifth",
               "--param", "wait=true")
    wait_for(lambda: all(fifth in authorities(cluster, i) for i in range(5)), 30,
             "the fifth in the authority set")
    since = cluster.height(0)

    def signed_by_fifth() -> bool:
        for h in range(since + 1, cluster.height(0) + 1):
            certificate = cluster.admin(0, "certificate", height=h)
            if certificate and any(s["public_key"] == fifth for s in certificate["signers"]):
                return True
        return False
    wait_for(signed_by_fifth, 60, "a certificate with the fifth's signature")


def authorities(cluster: Cluster, index: int) -> list[str]:
    members = cluster.admin(index, "validators")["authorities"]["members"]
    return [member["public_key"] for member in members]


def test_a_fifth_hospital_joins_by_the_runbook_and_breaks_the_glass_with_its_share(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "net")
    try:
        cluster.start_all()
        # The four announce where they listen on their own (no operator step).
        wait_for(lambda: all(member["addresses"] for member in
                             cluster.admin(0, "validators")["authorities"]["members"]),
                 30, "the four authorities' announcements")
        home, fifth = newcomer_home(tmp_path / "fifth", cluster)
        # Voting it in now is refused: it is not linked, let alone synced.
        with pytest.raises(AdminError, match="subject_not_ready"):
            cluster.admin(0, "validator_propose", action="add", subject=fifth, name="fifth")
        # 3. One authority vouches for it as an observer; 4. it starts, syncs and announces.
        node = vouched_newcomer(cluster, home, fifth, "fifth", 1)
        node.start()
        node.wait_ready(30)
        head = cluster.height(0)
        wait_for(lambda: cluster.height(4) >= head, 60, "the fifth to sync")
        observed = wait_for(
            lambda: all((o := cluster.admin(i, "observers")) and o[0]["connected"]
                        and o[0]["addresses"] for i in range(4)) and cluster.admin(0, "observers"),
            60, "every authority dialling the observer at its announced address")
        assert observed[0]["public_key"] == fifth and observed[0]["name"] == "fifth"
        epoch_before = cluster.status(0)["emergency"]["epoch"]
        # 5. The authorities vote it in (3 of 4), each after checking it is linked and synced;
        # it signs blocks: its signature is in later commit certificates.
        vote_in_and_see_it_sign(cluster, fifth)
        # The re-sharing gives it a share of the same key.
        key = cli.wait_for_key(cluster, [0, 1, 2, 3, 4], after_epoch=epoch_before)
        assert len(key["holders"]) == 5 and fifth in key["holders"] and key["threshold"] == 4
        assert cluster.admin(0, "emergency")["round"]["purpose"] == "reshare"
        # With node3 down, four holders are up, and a read needs four: the fifth's share is one.
        cluster.kill(3)
        people = cli.People(cluster, tmp_path)
        cli.break_glass_read(people, "hb 13.1 g/dL", node=4)
        audit = cli.ok("audit", *people.wallet(0, "patient"), "--json")
        glass = {line["hospital_name"] for line in audit if line["break_glass"]}
        assert "fifth" in glass and "node3" not in glass
        assert json.dumps(audit)
    finally:
        cluster.close()
