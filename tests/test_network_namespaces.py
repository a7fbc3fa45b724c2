"""Four nodes, each in its own network namespace on a shared bridge: the next proposer is cut
off with nftables, the other three go on finalizing, and after the heal the cut node catches up.
Its `/readyz` turns unready while it is cut off and ready again after the heal; its `/healthz`
stays 200 throughout.

Needs root (network namespaces, nftables). As root the test installs Debian's iproute2 and
nftables when they are missing; without root it is skipped with the reason.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from healthnode import crypto
from healthnode.home.config import load_config, write_config
from healthnode.tools.nemesis.backends import build_bridged_namespaces
from tests.cluster import Cluster, Patient, wait_for

CUT_RESUME_BOUND_S = 30
CATCH_UP_BOUND_S = 30
# The heartbeat period (5 s) plus the readiness margin (node/health.READY_MARGIN_MS, 10 s) plus
# one beat of the probe (1 s): a cut-off node is unready by then at the latest.
UNREADY_BOUND_S = 16
SUBNET = "10.77.{tag}.{host}"


def run(*command: str, stdin: str | None = None) -> None:
    subprocess.run(command, check=True, input=stdin, text=True, capture_output=True)


def need_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and nftables need root; run the suite as root")
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False,
                           capture_output=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is missing and apt-get install {package} failed")


class NamespacedCluster(Cluster):
    """A cluster whose node i runs in namespace `<prefix>i` with address 10.77.T.(i+1)."""

    def __init__(self, root: Path, tag: int) -> None:
        super().__init__(root, 4)
        self.tag = tag
        self.prefix = f"hn{os.getpid() % 100000}n"
        self.hub = f"hn{os.getpid() % 100000}h"
        self.namespaces = [f"{self.prefix}{i}" for i in range(4)]
        self._build_network()
        self._readdress()

    def address(self, index: int) -> str:
        return SUBNET.format(tag=self.tag, host=index + 1)

    def _build_network(self) -> None:
        build_bridged_namespaces(self.hub, self.prefix, self.namespaces,
                                 [self.address(i) for i in range(4)])

    def _readdress(self) -> None:
        """Listen on the namespace's address and dial the others at theirs."""
        for index, home in enumerate(self.homes):
            config = load_config(home)
            port = self.base_port + index
            peers = tuple(
                f"/ip4/{self.address(j)}/tcp/{self.base_port + j}/p2p/"
                f"{crypto.peer_id(self.public_keys[j])}"
                for j in range(4) if j != index)
            listen = (f"/ip4/{self.address(index)}/tcp/{port}",)
            p2p = dataclasses.replace(config.p2p, listen=listen, peers=peers)
            write_config(dataclasses.replace(config, p2p=p2p), home)

    def start(self, index: int) -> None:
        self.nodes[index].prefix = ("ip", "netns", "exec", self.namespaces[index])
        self.nodes[index].start()

    def cut(self, index: int) -> None:
        rules = ("table inet healthnode_cut {\n"
                 " chain input {\n"
                 "  type filter hook input priority 0; policy drop; iif lo accept;\n"
                 " }\n"
                 " chain output {\n"
                 "  type filter hook output priority 0; policy drop; oif lo accept;\n"
                 " }\n"
                 "}\n")
        run("ip", "netns", "exec", self.namespaces[index], "nft", "-f", "-", stdin=rules)

    def probe(self, index: int, path: str) -> int:
        """The HTTP status of the node's `path` (/healthz, /readyz), asked inside its namespace
        (the cut lets loopback through)."""
        host_port = load_config(self.homes[index]).metrics.listen
        code = (f"import urllib.request, urllib.error\n"
                f"try:\n"
                f"    print(urllib.request.urlopen('http://{host_port}{path}', timeout=3).status)\n"
                f"except urllib.error.HTTPError as error:\n"
                f"    print(error.code)\n")
        answer = subprocess.run(["ip", "netns", "exec", self.namespaces[index], sys.executable,
                                 "-c", code], check=True, capture_output=True, text=True)
        return int(answer.stdout.strip())

    def heal(self, index: int) -> None:
        run("ip", "netns", "exec", self.namespaces[index], "nft", "delete", "table", "inet",
            "healthnode_cut")

    def close(self) -> None:
        super().close()
        for namespace in [*self.namespaces, self.hub]:
            subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)


@pytest.fixture
def namespaced(tmp_path: Path) -> Iterator[NamespacedCluster]:
    need_root_and_tools()
    cluster = NamespacedCluster(tmp_path / "net", tag=os.getpid() % 200 + 20)
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


@pytest.mark.slow  # 20 s: in CI's slow step (.ci/run), out of the default suite's time
def test_cutting_the_proposer_off_lets_the_other_three_go_on_and_it_catches_up_after(
        namespaced: NamespacedCluster) -> None:
    cluster = namespaced
    cluster.wait_height(1, [0, 1, 2, 3], timeout_s=30)
    height = max(cluster.height(i) for i in range(4))
    proposer = (height + 1) % 4  # V[(height + round) mod n] for the next height, round 0
    wait_for(lambda: cluster.probe(proposer, "/readyz") == 200, 15, f"node{proposer} ready",
             interval_s=0.5)
    cluster.cut(proposer)
    others = [i for i in range(4) if i != proposer]
    patient = Patient()
    cut_at = time.monotonic()
    txs = [cluster.submit(others[0], patient.anchor()) for _ in range(3)]
    cluster.wait_final(txs, others, timeout_s=CUT_RESUME_BOUND_S)
    resumed_s = time.monotonic() - cut_at
    assert not cluster.is_final(proposer, txs[-1]), "the cut node cannot know this yet"
    wait_for(lambda: cluster.probe(proposer, "/readyz") == 503,
             UNREADY_BOUND_S - (time.monotonic() - cut_at), f"node{proposer} unready when cut",
             interval_s=0.5)
    unready_s = time.monotonic() - cut_at
    assert cluster.probe(proposer, "/healthz") == 200  # alive all the same
    # Stay cut long enough for the links to be declared dead (ping interval + timeout, 4 s) and
    # for a few heartbeat blocks, so the heal exercises redial and block sync.
    time.sleep(max(0.0, 12 - (time.monotonic() - cut_at)))
    cluster.heal(proposer)
    healed_at = time.monotonic()
    target = cluster.height(others[0])
    wait_for(lambda: cluster.height(proposer) >= target, CATCH_UP_BOUND_S,
             f"node{proposer} back at height {target}")
    caught_up_s = time.monotonic() - healed_at
    wait_for(lambda: cluster.probe(proposer, "/readyz") == 200, CATCH_UP_BOUND_S,
             f"node{proposer} ready after the heal", interval_s=0.5)
    top = min(cluster.height(i) for i in range(4))
    for h in range(1, top + 1):
        assert len({cluster.block_hash(i, h) for i in range(4)}) == 1
    print(f"\nproposer node{proposer} cut: others final after {resumed_s:.1f} s, it unready "
          f"after {unready_s:.1f} s; caught up {caught_up_s:.1f} s after the heal")
