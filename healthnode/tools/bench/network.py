"""The bench's testnet and its conversation with it: the node processes (`Network`, with their
CPU time and peak RSS from /proc), submitting signed transactions through the admin sockets,
and `FinalityWatcher`, which follows node 0's blocks to see when each transaction is final."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from healthnode.admin.client import call
from healthnode.home import layout
from healthnode.protocol.tx import AnyTx
from healthnode.tools.bench import BenchError
from healthnode.tools.bench.workload import Workload
from healthnode.tools.launcher import LaunchError, NodeProcess, stop_all

SUBMIT_BATCH: Final = 500
READY_TIMEOUT_S: Final = 60
FINAL_TIMEOUT_S: Final = 300


@dataclass
class Network:
    directory: Path
    nodes: int
    homes: list[Path] = field(default_factory=list)
    processes: dict[int, NodeProcess] = field(default_factory=dict)
    chain_id: str = layout.DEFAULT_CHAIN_ID

    def create(self) -> None:
        base = layout.free_base_port(self.nodes)
        _, made = layout.make_testnet(self.nodes, self.directory, base)
        self.homes = [node.path for node in made]

    def start(self, index: int) -> None:
        node = NodeProcess(self.homes[index])
        node.start()
        self.processes[index] = node

    def wait_ready(self, index: int) -> None:
        try:
            self.processes[index].wait_ready(READY_TIMEOUT_S)
        except LaunchError as error:
            raise BenchError(str(error).splitlines()[0] + f"; see {self.homes[index] / 'node.log'}"
                             ) from None

    def stop(self, index: int) -> None:
        self.processes.pop(index).stop()

    def stop_all(self) -> None:
        stop_all(self.processes.values())
        self.processes.clear()

    def admin(self, index: int, method: str, **params: Any) -> Any:
        return call(self.homes[index] / "admin.sock", method, params, timeout_s=60)

    def status(self, index: int) -> dict[str, Any]:
        status: dict[str, Any] = self.admin(index, "status")
        return status

    def height(self, index: int) -> int:
        return int(self.status(index)["height"])

    def peak_rss_mb(self, index: int) -> float:
        status = Path(f"/proc/{self.processes[index].pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self, index: int) -> float:
        """User + system CPU time the node's process has used so far (`/proc/<pid>/stat`)."""
        stat = Path(f"/proc/{self.processes[index].pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU time of this process (the load generator), all threads."""
    times = os.times()
    return times.user + times.system


# --- finality watching ------------------------------------------------------------------------


class FinalityWatcher:
    """Follows node 0's new blocks and notes when each transaction was first seen final."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.final_at: dict[str, float] = {}
        self.height = network.height(0)
        self.txs_in_block: dict[int, int] = {}
        self._stop = threading.Event()
        self._new_block = threading.Condition()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def __enter__(self) -> FinalityWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _follow(self) -> None:
        """Ask node 0 for the next block every 10 ms: a missing block is one LevelDB read there,
        so the watcher costs the measured network next to nothing (polling `status` cost node 0
        about a tenth of its CPU)."""
        while not self._stop.is_set():
            block = self.network.admin(0, "block", height=self.height + 1)
            if block is None:
                time.sleep(0.01)
                continue
            seen = time.monotonic()
            with self._new_block:
                self.height += 1
                self.txs_in_block[self.height] = len(block["txs"])
                for tx_hash in block["txs"]:
                    self.final_at.setdefault(tx_hash, seen)
                self._new_block.notify_all()

    def wait_all(self, tx_hashes: Iterable[str], timeout_s: float = FINAL_TIMEOUT_S) -> float:
        """When the last of `tx_hashes` was seen final. Looks again only after a new block."""
        wanted = list(tx_hashes)
        missing = wanted
        deadline = time.monotonic() + timeout_s
        with self._new_block:
            while True:
                missing = [h for h in missing if h not in self.final_at]
                if not missing:
                    return max(self.final_at[h] for h in wanted)
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise BenchError(f"{len(missing)} of {len(wanted)} transactions not final "
                                     f"after {timeout_s} s")
                self._new_block.wait(min(left_s, 0.5))


def submit(network: Network, node: int, txs: Sequence[AnyTx]) -> dict[str, float]:
    """Submit in batches; returns the submit time of each transaction (hash hex)."""
    times: dict[str, float] = {}
    for start in range(0, len(txs), SUBMIT_BATCH):
        chunk = txs[start:start + SUBMIT_BATCH]
        sent = time.monotonic()
        result = network.admin(node, "submit_txs", txs=[tx.encode().hex() for tx in chunk])
        if result["refused"]:
            raise BenchError(f"node{node} refused: {result['refused'][:3]}")
        for tx in chunk:
            times[tx.hash.hex()] = sent
    return times


def submit_in_parallel(network: Network, workload: Workload) -> dict[str, float]:
    times: dict[str, float] = {}
    errors: list[BaseException] = []

    def worker(node: int) -> None:
        try:
            times.update(submit(network, node, workload.per_node[node]))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(network.nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return times
