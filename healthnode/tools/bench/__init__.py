"""`healthnode bench`: how fast a real network of node processes finalizes, against the bound
set by signature verification on this machine.

Theory of operation
-------------------
The benchmark starts a fresh testnet of `healthnode run` processes on 127.0.0.1 (in a temporary
directory), registers a few providers, and signs its whole workload before the clock starts:
record anchors from many patients and, for every tenth transaction, a grant to a provider. This
process is the load generator: it submits through the nodes' admin sockets in batches (each
patient's transactions to one node, in nonce order, as a wallet does) and watches node 0's blocks
to see when each transaction is final. It measures:

- finalized transactions per second at full load (everything submitted at once);
- submit-to-final latency p50/p99 at a fixed 500 tx/s;
- the catch-up rate of a node restarted after missing the blocks of a full-load run (from the
  moment it is seen linked, its admin socket answering and a peer connected, to the head; the
  time to connect and the whole restart-to-head time are reported beside it);
- peak RSS of each node (VmHWM);
- the Ed25519 verification rate of this machine, measured in the same run, and the bound
  `verify_rate x cores / nodes` (every node verifies every transaction once), with the ratio of the
  finalized rate to it;
- the nodes' CPU time over the full-load phase per transaction per node (user + system, from
  /proc), and the load generator's own: steadier than the rate, and what any speed-up must cut;
- the pipeline floor, after the network has stopped: the CPU per transaction of the work every
  node must do for every transaction (decode, admit with its signature check, block check,
  commit, a share of block building), run in this process on the node's own code and a real
  LevelDB, with no network, consensus or client; and the rate `cores / (nodes x floor)` that a
  network could reach if nothing else cost anything (`pipeline_floor`).

docs/benchmarks.md records the figures and what limits them.

    workload.py   the signed transactions: patients' anchors and grants, per node
    network.py    the testnet's processes, submitting to them, watching node 0 finalize
    run.py        the run: its phases, the verification bound, the report, `main`
    floor.py      the pipeline floor, in this process (`pipeline_floor`)
    tree.py       the state tree's cost, in memory (`tree_cost`)

This module owns what they all share: `BenchError` and the progress callback's type.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


class BenchError(Exception):
    pass
