"""The run: clients and the nemesis acting at once on a backend, then the final read and check.

Threads, not trio: the admin client is blocking, each thread is a plain loop, and all of them
are started and joined by `run_nemesis` (none outlives it), which is the structured part.

- Each client thread submits one record anchor at a time, signed by a fresh patient key (nonce 1),
  so a lost or refused transaction never blocks the ones after it, to a node picked at random,
  and polls that node until the transaction is final or `OP_TIMEOUT_S` passes.
- The nemesis thread alternates quiet time and faults (faults.py); after each heal it measures
  recovery with a probe transaction that must become final on every node.
- At the end every fault is healed, the clients stop, every node is waited for until it has
  passed the highest acknowledged height, and every node's blocks are read and checked.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from healthnode.admin.client import AdminError
from healthnode.crypto import Identity, digest, keyed_digest
from healthnode.protocol.tx import KeyWrap, RecordAnchor
from healthnode.tools.nemesis.backends import Backend, wait_until
from healthnode.tools.nemesis.checker import Block, Report, check
from healthnode.tools.nemesis.faults import FAULT_KINDS, Fault, next_fault, quiet_s
from healthnode.tools.nemesis.history import HistoryWriter, read_history

OP_TIMEOUT_S: Final = 30.0  # a submitted tx not final on its node by then is an indeterminate fail
POLL_INTERVAL_S: Final = 0.2
RECOVERY_TIMEOUT_S: Final = 180.0  # beyond the 30 s quorum-return bound with a wide margin
CONVERGE_TIMEOUT_S: Final = 120.0
NEMESIS_TAG: Final = keyed_digest(b"nemesis-tag-key".ljust(32, b"."), b"nemesis")


def make_anchor(chain_id: str) -> tuple[str, bytes]:
    """A signed record anchor of a fresh patient: (tx hash hex, encoded tx)."""
    patient = Identity.generate()
    tx = RecordAnchor(
        signer=b"", nonce=1, patient=patient.public_key,
        ciphertext_hash=digest(patient.public_key + b"nemesis"),
        ciphertext_bytes=1024, tags=(NEMESIS_TAG,),
        key_wraps=(KeyWrap(patient.public_key, b"w" * 80),), supersedes=None,
    ).sign(patient, chain_id)
    return tx.hash.hex(), tx.encode()


def is_definite(error: AdminError) -> bool:
    """Whether a failed submit_tx certainly did not hand the tx to the node.

    An answer with an error (`... (code -32xxx)`: refused by the ledger or the mempool) and a
    connection that never opened (no socket, connection refused) are definite; anything else
    (a timeout after sending, a connection reset) may have delivered it: indeterminate."""
    text = str(error)
    return "(code " in text or "no admin socket" in text or "Connection refused" in text


@dataclass
class RunOptions:
    duration_s: float
    history: Path
    seed: int
    clients: int = 4
    kinds: tuple[str, ...] = FAULT_KINDS


class Run:
    def __init__(self, backend: Backend, options: RunOptions,
                 log: Callable[[str], None] = print) -> None:
        self.backend = backend
        self.options = options
        self.log = log
        self.history = HistoryWriter(options.history)
        self.started = time.monotonic()
        self.stopping = threading.Event()
        self._op_lock = threading.Lock()
        self._next_op = 0
        self.chains: dict[str, list[Block]] = {}  # what the final check read, for inspection
        self.down: set[int] = set()  # nodes the nemesis has stopped and not yet started

    def now(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def _op_id(self) -> int:
        with self._op_lock:
            self._next_op += 1
            return self._next_op

    # --- clients ---------------------------------------------------------------------------

    def operation(self, node: int, deadline_s: float = OP_TIMEOUT_S) -> tuple[str, int | None]:
        """Submit one tx to `node`; the tx hash and its height if acknowledged, else None."""
        op = self._op_id()
        tx_hash, raw = make_anchor(self.backend.chain_id)
        self.history.write({"type": "invoke", "op": op, "node": node, "tx_hash": tx_hash,
                            "t": self.now()})
        try:
            self.backend.admin(node, "submit_tx", {"tx": raw.hex()})
        except AdminError as error:
            self.history.write({"type": "fail", "op": op, "node": node, "tx_hash": tx_hash,
                                "error": str(error)[:200], "definite": is_definite(error),
                                "t": self.now()})
            return tx_hash, None
        deadline = time.monotonic() + deadline_s
        error_text = "not final in time"
        while time.monotonic() < deadline:
            try:
                answer = self.backend.admin(node, "tx", {"tx_hash": tx_hash})
                if answer.get("status") == "final":
                    height = int(answer["height"])
                    self.history.write({"type": "ok", "op": op, "node": node,
                                        "tx_hash": tx_hash, "height": height, "t": self.now()})
                    return tx_hash, height
            except AdminError as error:
                error_text = str(error)[:200]
            time.sleep(POLL_INTERVAL_S)
        self.history.write({"type": "fail", "op": op, "node": node, "tx_hash": tx_hash,
                            "error": error_text, "definite": False, "t": self.now()})
        return tx_hash, None

    def client(self, number: int) -> None:
        # A seeded schedule to replay a run, not a secret: hence S311 is beside the point.
        rng = random.Random(self.options.seed * 1000 + number)  # noqa: S311
        while not self.stopping.is_set():
            _, height = self.operation(rng.randrange(self.backend.node_count))
            if height is None:
                time.sleep(0.5)  # a refusing or unreachable node: do not spin on it

    # --- nemesis ---------------------------------------------------------------------------

    def apply(self, fault: Fault) -> None:
        backend = self.backend
        for index in fault.nodes:
            if fault.kind in ("kill", "kill_two"):
                self.down.add(index)
                backend.kill(index)
            elif fault.kind == "restart":
                self.down.add(index)
                backend.stop(index)
            elif fault.kind == "pause":
                backend.pause(index)
        if fault.kind == "isolate":
            backend.isolate(fault.nodes[0])
        elif fault.kind == "partition":
            backend.partition(fault.groups(backend.node_count))

    def revive_crashed(self) -> None:
        """Start every node that exited on its own (a crash is a finding: it is recorded)."""
        for index in range(self.backend.node_count):
            if index not in self.down and not self.backend.running(index):
                self.history.write({"type": "crash", "node": index, "t": self.now()})
                self.log(f"nemesis t={self.now():.0f}s node{index} CRASHED; starting it again")
                self.backend.start(index)

    def heal(self, fault: Fault) -> None:
        backend = self.backend
        if fault.kind == "isolate":
            backend.reconnect(fault.nodes[0])
        elif fault.kind == "partition":
            backend.heal_partition()
        for index in fault.nodes:
            if fault.kind == "pause":
                backend.unpause(index)
            elif fault.kind in ("kill", "kill_two", "restart"):
                backend.start(index)
        self.down.clear()
        self.revive_crashed()

    def measure_recovery(self, after: str, healed_at: float,
                         rng: random.Random) -> float | None:
        """Seconds from `healed_at` until a fresh tx is final on every node (None: not in time)."""
        deadline = healed_at + RECOVERY_TIMEOUT_S
        nodes = list(range(self.backend.node_count))
        while time.monotonic() < deadline:
            submitted_to = rng.choice(nodes)
            tx_hash, height = self.operation(submitted_to,
                                             deadline_s=max(1.0, deadline - time.monotonic()))
            if height is None:
                time.sleep(0.5)
                continue

            def final_everywhere(tx_hash: str = tx_hash) -> bool:
                self.revive_crashed()  # a node that crashed meanwhile would never answer
                for index in nodes:
                    try:
                        answer = self.backend.admin(index, "tx", {"tx_hash": tx_hash})
                    except AdminError:
                        return False
                    if answer.get("status") != "final":
                        return False
                return True

            if wait_until(final_everywhere, max(0.0, deadline - time.monotonic())):
                seconds = round(time.monotonic() - healed_at, 2)
                self.history.write({"type": "recovery", "after": after, "seconds": seconds,
                                    "t": self.now()})
                return seconds
        self.history.write({"type": "recovery", "after": after, "seconds": RECOVERY_TIMEOUT_S,
                            "timed_out": True, "t": self.now()})
        return None

    def nemesis(self, until: float) -> None:
        rng = random.Random(self.options.seed)  # noqa: S311 (a replayable schedule)
        while time.monotonic() < until:
            if self.stopping.wait(quiet_s(rng)) or time.monotonic() >= until:
                return
            self.revive_crashed()
            fault = next_fault(rng, self.backend.node_count, self.options.kinds)
            duration_s = min(fault.duration_s, max(1.0, until - time.monotonic()))
            self.history.write({"type": "nemesis", "fault": fault.kind, "nodes": list(fault.nodes),
                                "phase": "start", "t": self.now()})
            self.log(f"nemesis t={self.now():.0f}s {fault.describe()}")
            try:
                self.apply(fault)
                self.stopping.wait(duration_s)
            finally:
                self.heal(fault)
                healed_at = time.monotonic()
                self.history.write({"type": "nemesis", "fault": fault.kind,
                                    "nodes": list(fault.nodes), "phase": "heal",
                                    "t": self.now()})
            seconds = self.measure_recovery(fault.kind, healed_at, rng)
            self.log(f"nemesis t={self.now():.0f}s healed {fault.kind}: recovered in "
                     f"{seconds if seconds is not None else 'NOT'} s")

    # --- the whole run ---------------------------------------------------------------------

    def execute(self) -> Report:
        self.log(f"nemesis: waiting for {self.backend.node_count} nodes to finalize")
        wait_until(lambda: self._all_at_least(1), CONVERGE_TIMEOUT_S, interval_s=0.5)
        until = time.monotonic() + self.options.duration_s
        clients = [threading.Thread(target=self.client, args=(number,), daemon=True)
                   for number in range(self.options.clients)]
        for thread in clients:
            thread.start()
        try:
            self.nemesis(until)
        finally:
            self.stopping.set()
            for thread in clients:
                thread.join()
        self.revive_crashed()
        self.history.close()
        return self.final_check()

    def _heights(self) -> list[int | None]:
        heights: list[int | None] = []
        for index in range(self.backend.node_count):
            try:
                heights.append(int(self.backend.admin(index, "status", {})["height"]))
            except AdminError:
                heights.append(None)
        return heights

    def _all_at_least(self, height: int) -> bool:
        return all(h is not None and h >= height for h in self._heights())

    def final_check(self) -> Report:
        events = list(read_history(self.options.history))
        acknowledged_top = max((int(e["height"]) for e in events if e["type"] == "ok"),
                               default=0)
        self.log(f"nemesis: waiting for every node to pass height {acknowledged_top}")
        wait_until(lambda: self._all_at_least(acknowledged_top), CONVERGE_TIMEOUT_S,
                   interval_s=0.5)
        heights = self._heights()
        common = min((h for h in heights if h is not None), default=0)
        if any(h is None for h in heights):
            self.log(f"nemesis: some node does not answer: heights {heights}")
        chains: dict[str, list[Block]] = {}
        for index, height in enumerate(heights):
            if height is None:
                chains[f"node{index}"] = []
                continue
            blocks = []
            for h in range(1, common + 1):
                block = self.backend.admin(index, "block", {"height": h}, timeout_s=30)
                blocks.append(Block(h, str(block["hash"]), tuple(str(t) for t in block["txs"])))
            chains[f"node{index}"] = blocks
        self.chains = chains
        return check(events, chains)


def report_json(report: Report, options: RunOptions, backend_name: str) -> str:
    summary: dict[str, Any] = {"backend": backend_name, "duration_s": options.duration_s,
                               "seed": options.seed, "clients": options.clients,
                               "history": str(options.history), **report.summary()}
    return json.dumps(summary, indent=2)
