"""A real network for integration tests: `healthnode run` processes on 127.0.0.1 with real LevelDB
homes, driven through their admin sockets."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from healthnode.admin.client import call
from healthnode.crypto import Identity, digest, keyed_digest
from healthnode.home.config import KEY_FILE, load_genesis
from healthnode.home.keys import read_node_public_key
from healthnode.home.layout import free_base_port, make_testnet
from healthnode.protocol.genesis import GENESIS_FORMAT, Genesis
from healthnode.protocol.tx import KeyWrap, RecordAnchor
from healthnode.tools.launcher import LOG_FILE, NodeProcess

CHAIN_ID = "healthnode-testnet"
LAB_TAG = keyed_digest(b"cluster-tag-key".ljust(32, b"."), b"lab")

# Events that only a bug of ours logs.
BUG_EVENTS = ("bug", "admin_internal_error")


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str,
             interval_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class Patient:
    """A patient key that anchors records with its running nonce."""

    def __init__(self) -> None:
        self.identity = Identity.generate()
        self.nonce = 0

    def anchor(self) -> bytes:
        self.nonce += 1
        tx = RecordAnchor(
            signer=b"", nonce=self.nonce, patient=self.identity.public_key,
            ciphertext_hash=digest(self.identity.public_key + self.nonce.to_bytes(8, "big")),
            ciphertext_bytes=1024, tags=(LAB_TAG,),
            key_wraps=(KeyWrap(self.identity.public_key, b"w" * 80),), supersedes=None,
        ).sign(self.identity, CHAIN_ID)
        return tx.encode()


class Cluster:
    """A testnet (`make_testnet`) in `root`, or (`of_homes`) the homes of a network made
    otherwise, such as one founded by its hospitals (tests/test_founding.py)."""

    def __init__(self, root: Path, nodes: int = 4, rules_version: int = GENESIS_FORMAT,
                 keygen: bool = False) -> None:
        base_port = free_base_port(nodes)
        genesis, node_homes = make_testnet(nodes, root, base_port, rules_version=rules_version,
                                           keygen=keygen)
        self._adopt(root / "genesis.json", genesis, base_port,
                    [NodeProcess(node.path) for node in node_homes])

    @classmethod
    def of_homes(cls, genesis_file: Path, base_port: int, nodes: list[NodeProcess]) -> Cluster:
        """The network of these nodes' homes, made already, whose node i serves its metrics on
        127.0.0.1:`base_port + 100 + i` (as a testnet's do); not started."""
        cluster = cls.__new__(cls)
        cluster._adopt(genesis_file, load_genesis(genesis_file), base_port, nodes)
        return cluster

    def _adopt(self, genesis_file: Path, genesis: Genesis, base_port: int,
               nodes: list[NodeProcess]) -> None:
        self.base_port = base_port
        self.genesis = genesis
        self.genesis_file = genesis_file  # what a hospital hands its patients
        self.nodes = nodes
        self.homes = [node.home for node in nodes]
        self.public_keys = [read_node_public_key(home / KEY_FILE) for home in self.homes]

    # --- processes --------------------------------------------------------------------------

    def start(self, index: int) -> None:
        self.nodes[index].start()

    def start_all(self) -> None:
        for index in range(len(self.homes)):
            self.start(index)
        for index in range(len(self.homes)):
            self.wait_ready(index)

    def wait_ready(self, index: int, timeout_s: float = 30) -> None:
        self.nodes[index].wait_ready(timeout_s)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> int:
        code = self.nodes[index].kill(sig)
        assert code is not None, f"node{index} was never started"
        return code

    def running(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.running]

    def close(self) -> None:
        """Stop every node; then no node's log may show a bug of ours (an exception that
        escaped a stream handler or an admin method: docs/architecture.md, rule 5)."""
        for node in self.nodes:
            if node.running:
                node.kill()
        bugs = self.bugs()
        assert not bugs, "a bug of ours in a node's log:\n" + "\n".join(bugs)

    def bugs(self) -> list[str]:
        found = []
        for home in self.homes:
            log = home / LOG_FILE
            if not log.exists():
                continue
            for line in log.read_text(errors="replace").splitlines():
                if any(f'"event": "{event}"' in line for event in BUG_EVENTS):
                    found.append(f"{home.name}: {line[:3000]}")
        return found

    def log_tail(self, index: int, chars: int = 3000) -> str:
        return self.nodes[index].log_tail(chars)

    # --- admin ------------------------------------------------------------------------------

    def admin(self, index: int, method: str, **params: Any) -> Any:
        return call(self.homes[index] / "admin.sock", method, params, timeout_s=10)

    def status(self, index: int) -> dict[str, Any]:
        result: dict[str, Any] = self.admin(index, "status")
        return result

    def height(self, index: int) -> int:
        return int(self.status(index)["height"])

    def submit(self, index: int, raw_tx: bytes) -> str:
        return str(self.admin(index, "submit_tx", tx=raw_tx.hex())["tx_hash"])

    def is_final(self, index: int, tx_hash: str) -> bool:
        return bool(self.admin(index, "tx", tx_hash=tx_hash)["status"] == "final")

    def wait_final(self, tx_hashes: list[str], nodes: list[int], timeout_s: float) -> None:
        for index in nodes:
            wait_for(lambda i=index: all(self.is_final(i, h) for h in tx_hashes), timeout_s,
                     f"{len(tx_hashes)} transactions final on node{index}")

    def wait_height(self, height: int, nodes: list[int], timeout_s: float) -> None:
        for index in nodes:
            wait_for(lambda i=index: self.height(i) >= height, timeout_s,
                     f"node{index} at height {height}")

    def block_hash(self, index: int, height: int) -> str | None:
        block = self.admin(index, "block", height=height)
        return None if block is None else str(block["hash"])

    def metric(self, index: int, prefix: str) -> float:
        """The sum of the node's scraped Prometheus samples whose line starts with `prefix`
        (a metric name and, optionally, the start of its labels)."""
        import urllib.request
        port = self.base_port + 100 + index
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(prefix))

    def rejected(self, index: int, reason: str) -> float:
        """The node's `healthnode_rejected_messages_total{reason=...}` metric, scraped."""
        return self.metric(index, f'healthnode_rejected_messages_total{{reason="{reason}"}} ')
