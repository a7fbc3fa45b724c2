"""Four hospitals found a network, and no machine ever holds more than its own hospital's key.

Each hospital makes its node key on its own machine (here, a directory of its own) with
`healthnode keys new --kind node` and hands over only what `keys public` writes of it. A founder
writes a draft (`genesis new`), adds the four public keys (`genesis add-authority`), and hands
the genesis file back; every hospital runs `init --genesis FILE --key ITS_KEY`, which prints the
genesis hash that the hospitals compare out of band (the founder's `genesis hash` prints it too).
Then each hospital lists the others' addresses under `[p2p].peers`, starts `healthnode run`, and
the network finalizes transactions. docs/operations.md, "Founding a network", is this runbook.

The hospitals keep their keys the three ways a home allows (docs/operations.md, "At rest"): in
clear in the home, sealed under a passphrase, and outside the home with its public half there
(`run --key-file`).

The network starts without a break-glass key (the genesis has none); its key is made on chain
after the start. `founded` is a module fixture that yields the running network, so a test of
that step (and of a break-glass read after it) can be added here on the same network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from healthnode import crypto
from healthnode.home import config, keys
from healthnode.home.layout import METRICS_PORT_OFFSET, free_base_port
from healthnode.tools.launcher import NodeProcess
from tests import wallet_cli as cli
from tests.cluster import Cluster

pytestmark = pytest.mark.slow  # hospitals found a network, 12-25 s: CI runs it (.ci/run)

HOSPITALS = ("st-mary", "general", "childrens", "university")
# How each hospital keeps its node key: in clear in the home, sealed in the home, or outside it.
KEPT = ("clear", "sealed", "outside", "clear")
PASSPHRASE = "hospital general's passphrase"
CHAIN_ID = "founded-test"


def run_all(commands: Sequence[Sequence[str]], env: dict[str, str] | None = None) -> list[Any]:
    """`healthnode` commands that do not depend on each other (each hospital's own step), run
    at once as processes; their JSON answers, in order. Every one must succeed."""
    environment = {k: v for k, v in os.environ.items() if k != keys.PASSPHRASE_ENV}
    processes = [subprocess.Popen([sys.executable, "-m", "healthnode", *command],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL, env=environment | (env or {}))
                 for command in commands]
    answers = []
    for command, process in zip(commands, processes, strict=True):
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, f"healthnode {' '.join(command[:3])}: {err}"
        answers.append(json.loads(out))
    return answers


@dataclass
class Founded:
    """A network founded by its hospitals: what each step printed, and the network running."""

    cluster: Cluster
    root: Path
    handed_over: list[Path]  # what each hospital gave the founder: its key's public half
    founder_hash: str  # what `genesis hash` printed on the founder's machine
    inits: list[dict[str, Any]]  # what `init` printed at each hospital


def found(root: Path) -> Founded:
    """The founding runbook, step by step, each hospital in a directory of its own; the nodes
    configured to dial each other but not started."""
    machines = [root / name for name in HOSPITALS]
    founder = root / "founder"
    for machine in [*machines, founder]:
        machine.mkdir(mode=0o700)
    # 1. Each hospital makes its node key and writes its public half, which it hands over.
    run_all([["keys", "new", "--kind", "node", "--out", str(machine / "node_key.json"),
              *(["--sealed"] if kept == "sealed" else [])]
             for machine, kept in zip(machines, KEPT, strict=True)],
            env={keys.PASSPHRASE_ENV: PASSPHRASE})
    run_all([["keys", "public", str(machine / "node_key.json"), "--out",
              str(machine / "public.json")] for machine in machines])
    handed_over = [founder / f"{name}.public.json" for name in HOSPITALS]
    for machine, public in zip(machines, handed_over, strict=True):
        shutil.copyfile(machine / "public.json", public)
    # 2. The founder writes the draft and adds the four hospitals, one at a time.
    genesis = founder / "genesis.json"
    run_all([["genesis", "new", "--out", str(genesis), "--chain-id", CHAIN_ID]])
    for name, public in zip(HOSPITALS, handed_over, strict=True):
        run_all([["genesis", "add-authority", "--genesis", str(genesis), "--name", name,
                  "--key", str(public)]])
    [digest] = run_all([["genesis", "hash", str(genesis)]])
    # 3. Each hospital makes its home from the genesis and its own key; the one that keeps its
    #    key outside the home gives init the public half, which is all the home will hold.
    given = [machine / ("public.json" if kept == "outside" else "node_key.json")
             for machine, kept in zip(machines, KEPT, strict=True)]
    inits = run_all([["init", "--home", str(machine / "home"), "--genesis", str(genesis),
                      "--key", str(key)]
                     for machine, key in zip(machines, given, strict=True)])
    # 4. Each hospital lists the others' addresses (each told the others its host, port and
    #    peer id) and where it listens itself.
    base_port = free_base_port(len(HOSPITALS))
    peer_ids = [init["peer_id"] for init in inits]
    for index, machine in enumerate(machines):
        home = machine / "home"
        node_config = config.load_config(home)
        config.write_config(dataclasses.replace(
            node_config,
            p2p=dataclasses.replace(
                node_config.p2p, listen=(f"/ip4/127.0.0.1/tcp/{base_port + index}",),
                peers=tuple(f"/ip4/127.0.0.1/tcp/{base_port + other}/p2p/{peer_ids[other]}"
                            for other in range(len(HOSPITALS)) if other != index)),
            metrics=dataclasses.replace(
                node_config.metrics,
                listen=f"127.0.0.1:{base_port + METRICS_PORT_OFFSET + index}")), home)
    nodes = []
    for machine, kept in zip(machines, KEPT, strict=True):
        if kept == "sealed":
            nodes.append(NodeProcess(machine / "home", env=os.environ | {
                keys.PASSPHRASE_ENV: PASSPHRASE}))
        elif kept == "outside":
            nodes.append(NodeProcess(machine / "home",
                                     options=("--key-file", str(machine / "node_key.json"))))
        else:
            nodes.append(NodeProcess(machine / "home"))
    cluster = Cluster.of_homes(genesis, base_port, nodes)
    return Founded(cluster, root, handed_over, digest["genesis_hash"], inits)


@pytest.fixture(scope="module")
def founded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Founded]:
    """The founded network, running: every node ready."""
    network = found(tmp_path_factory.mktemp("founding"))
    try:
        network.cluster.start_all()
        yield network
    finally:
        network.cluster.close()


def test_every_hospital_inits_the_same_genesis_from_public_keys_alone(founded: Founded) -> None:
    cluster = founded.cluster
    assert [init["genesis_hash"] for init in founded.inits] == [founded.founder_hash] * 4
    assert cluster.genesis.hash.hex() == founded.founder_hash
    assert [a.name for a in cluster.genesis.authorities] == list(HOSPITALS)
    assert cluster.genesis.emergency is None  # made on chain, after the start
    assert json.loads(cluster.genesis_file.read_text())["emergency"] is None
    # The founder was given public keys and nothing else; each home holds its own hospital's
    # key, as the hospital keeps it, and carries its hospital's name from the genesis.
    for public in founded.handed_over:
        assert keys.secret_form(keys.read_key_document(public)) == "none"
    assert sorted(p.name for p in (founded.root / "founder").iterdir()) == sorted(
        ["genesis.json", *(p.name for p in founded.handed_over)])
    forms = {"clear": "clear", "sealed": "sealed", "outside": "none"}
    for index, (init, kept) in enumerate(zip(founded.inits, KEPT, strict=True)):
        authority = cluster.genesis.authorities[index]
        assert init["name"] == authority.name == HOSPITALS[index]
        assert init["public_key"] == authority.public_key.hex() == cluster.public_keys[index].hex()
        assert init["peer_id"] == crypto.peer_id(authority.public_key)
        assert init["secret"] == forms[kept]


def test_the_founded_network_finalizes_a_transaction_on_every_node(founded: Founded) -> None:
    cluster = founded.cluster
    for index in range(4):
        status = cluster.status(index)
        assert status["genesis_hash"] == founded.founder_hash
        assert status["node"] == HOSPITALS[index]
    provider = crypto.Identity.generate().public_key.hex()
    done = cluster.admin(1, "provider_register", provider=provider, roles=["clinician"],
                         display_name="Dr Founding")
    cluster.wait_final([done["tx_hash"]], [0, 1, 2, 3], timeout_s=20)


def test_the_founding_authorities_generate_the_emergency_key_and_break_glass_works(
        founded: Founded, tmp_path: Path) -> None:
    """No machine dealt the key: the four nodes made it among themselves once they ran (the
    first round of the emergency key, docs/break-glass.md), each holds a share, and an
    emergency physician reads a record that the patient allowed."""
    cluster = founded.cluster
    key = cli.wait_for_key(cluster, [0, 1, 2, 3])
    assert key["threshold"] == 3 and key["holders"] == [k.hex() for k in cluster.public_keys]
    state = cluster.admin(0, "emergency")
    assert (state["round"]["number"], state["round"]["purpose"], state["round"]["outcome"]) == \
        (1, "found", "done")
    cli.break_glass_read(cli.People(cluster, tmp_path), "blood type A positive")
