"""What the soak does, and when: pure decisions from a seeded RNG (no I/O, no clock).

Theory of operation. Every choice of the run is drawn here, from `random.Random` instances the
runner seeds from `--seed`, so a run's schedule of faults, hostile requests and hang-ups can be
replayed (the nodes' answers and timing of course differ between runs):

- the nemesis waits `fault_gap_s` (uniform around `--nemesis-every-s`), then draws one fault with
  `next_soak_fault`: cut one authority link (admin `peer_disconnect` on one node, naming another;
  the gossip link redials by itself) or pause one node (SIGSTOP for 10 to 30 s, then SIGCONT).
  One fault at a time. Faults are `healthnode.tools.nemesis.faults.Fault` values, as in the nemesis;
  a link cut lists both ends in `nodes`.
- the wallets in a row cycle through a fixed mix of commands (`row_command_kind`): mostly reads
  (nonce, audit, records), and every tenth command a real write (a patient adds a small record
  through the wallet's own code), followed five commands later by the patient reading that record
  back (which commits an access.log: a second write).
- hostile admin requests come from a fixed table (`HOSTILE_CASES`): the malformed lines that
  stopped a validator in issue 18, plus a half line held open for a while.
- hang-ups come in kinds (`WALLET_HANGUPS`, `TCP_HANGUPS`), drawn uniformly.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Final

from healthnode.tools.nemesis.faults import Fault

SOAK_FAULT_KINDS: Final = ("link_cut", "pause")
PAUSE_S: Final = (10.0, 30.0)  # long enough for links to be declared dead and rounds to time out
NEMESIS_EVERY_S_DEFAULT: Final = 180.0  # "every few minutes"
FAULT_GAP_SPREAD: Final = 0.5  # a gap is uniform in every_s * (1 +- spread)

ROW_PAUSE_S: Final = 0.25  # between two commands in a row: ~4 commands/s, ~29,000 in 2 hours
WRITE_EVERY: Final = 10  # every tenth row command adds a record ...
READ_BACK_OFFSET: Final = 5  # ... and five commands later the patient reads it back
ROW_READS: Final = ("nonce", "audit", "records")
BURST_READS: Final = ("nonce", "audit")
BURST_EVERY_S: Final = (15.0, 45.0)  # between two bursts of --wallets-at-once commands
HANGUP_EVERY_S: Final = (3.0, 9.0)  # between two hang-ups (one wallet, one raw TCP client)
ADMIN_EVERY_S: Final = (1.0, 3.0)  # between two ordinary admin requests
HOSTILE_EVERY_S: Final = (8.0, 25.0)  # between two hostile admin requests
HALF_LINE_HOLD_S: Final = (8.0, 20.0)  # a half line hangs this long; a status runs meanwhile

WALLET_HANGUPS: Final = (
    "connect_then_leave",  # Noise and yamux done, no stream, host closed
    "stream_then_close",  # a client stream opened, nothing sent, stream closed
    "half_frame_then_reset",  # half a request frame, then the stream reset
    "half_frame_then_leave",  # half a request frame, then the whole host gone (no stream close)
)
TCP_HANGUPS: Final = (
    "close_at_once",  # TCP connect, then FIN
    "reset_at_once",  # TCP connect, then RST (SO_LINGER 0)
    "half_multistream",  # part of the multistream-select header, then FIN
    "garbage",  # bytes that are no protocol, then FIN
    "silent_stall",  # connect, say nothing for a few seconds, then FIN
)
TCP_STALL_S: Final = (1.0, 5.0)
ADMIN_READS: Final = ("status", "peers", "block")


def fault_gap_s(rng: random.Random, every_s: float) -> float:
    """Quiet time before the next fault."""
    return round(rng.uniform(every_s * (1 - FAULT_GAP_SPREAD), every_s * (1 + FAULT_GAP_SPREAD)),
                 1)


def next_soak_fault(rng: random.Random, node_count: int) -> Fault:
    """One fault: `link_cut` (nodes = (cutting node, authority it cuts), duration 0: it heals by
    itself) or `pause` (nodes = (paused node,), duration in PAUSE_S)."""
    assert node_count >= 2, "a link needs two nodes"
    kind = rng.choice(SOAK_FAULT_KINDS)
    if kind == "link_cut":
        cutting, peer = rng.sample(range(node_count), 2)
        return Fault(kind, (cutting, peer), 0.0)
    return Fault(kind, (rng.randrange(node_count),), round(rng.uniform(*PAUSE_S), 1))


def row_command_kind(number: int, has_record: bool) -> str:
    """The `number`-th command of the wallets in a row (0-based)."""
    if number % WRITE_EVERY == 0:
        return "record_add"
    if number % WRITE_EVERY == READ_BACK_OFFSET and has_record:
        return "record_get"
    return ROW_READS[number % len(ROW_READS)]


def row_node(number: int, node_count: int) -> int:
    """The node of the `number`-th row command: a plain rotation, shifted by one every
    WRITE_EVERY commands so that the writes, too, go to every node in turn."""
    return (number + number // WRITE_EVERY) % node_count


def burst_command_kind(index: int) -> str:
    return BURST_READS[index % len(BURST_READS)]


@dataclass(frozen=True, slots=True)
class HostileCase:
    """One malformed admin request. `line` is sent as is; with `hold` it is a half line, left
    hanging for HALF_LINE_HOLD_S and then closed (no answer is expected, but `status` on another
    connection must still answer). Every other case expects a JSON-RPC error answer."""

    name: str
    line: bytes
    hold: bool = False


def _request(method: str, params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                       "params": params}).encode() + b"\n"


NESTING_DEPTH: Final = 100_000  # the depth that raised RecursionError in issue 18
HUGE_INTEGER_DIGITS: Final = 5_000  # beyond Python's 4,300-digit int parsing limit

HOSTILE_CASES: Final = (
    HostileCase("not_json", b"this is not json\n"),
    HostileCase("deep_nesting", b"[" * NESTING_DEPTH + b"\n"),
    HostileCase("deep_nesting_in_params",
                b'{"jsonrpc":"2.0","id":1,"method":"status","params":{"x":'
                + b"[" * NESTING_DEPTH + b"]" * NESTING_DEPTH + b"}}\n"),
    HostileCase("huge_integer",
                b'{"jsonrpc":"2.0","id":1,"method":"block","params":{"height":'
                + b"9" * HUGE_INTEGER_DIGITS + b"}}\n"),
    HostileCase("block_height_2_64", _request("block", {"height": 2**64})),
    HostileCase("block_height_negative", _request("block", {"height": -1})),
    HostileCase("certificate_height_10_30", _request("certificate", {"height": 10**30})),
    HostileCase("backup_nul_in_dir", _request("backup", {"dir": "/nonexistent/soak\u0000x"})),
    HostileCase("unknown_method", _request("no_such_method", {})),
    HostileCase("params_not_an_object", _request("status", [1, 2])),
    HostileCase("half_line", b'{"jsonrpc":"2.0","id":1,"method":"sta', hold=True),
)


def next_hostile(rng: random.Random) -> HostileCase:
    return rng.choice(HOSTILE_CASES)


def admin_read(rng: random.Random, height: int) -> tuple[str, dict[str, Any]]:
    """An ordinary admin request: `status`, `peers`, or `block` at a height the node has."""
    method = rng.choice(ADMIN_READS)
    if method == "block":
        return method, {"height": rng.randint(1, max(1, height))}
    return method, {}
