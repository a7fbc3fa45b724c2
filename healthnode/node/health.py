"""Health, readiness and signer liveness: what a hospital's supervisor and dashboards ask of a
node (docs/operations.md, "Health and readiness").

- **Alive** (`/healthz`): the node's event loop answers. The loop stamps the time every
  `BEAT_INTERVAL_S`; the probe, served from the metrics thread, answers 503 when the last stamp
  is older than `LOOP_STALE_MS` (a loop stuck in a long computation, or deadlocked).
- **Ready** (`/readyz`): the node can serve and vote now. It is linked to a quorum of the
  authorities (counting itself when it is one), it is not catching up by block sync, and its
  head is no older than the heartbeat period (`empty_block_interval_ms` of the genesis, after
  which even an idle network makes a block) plus `READY_MARGIN_MS`. A node cut off from the
  others turns unready when its links time out or, at the latest, when its head grows too old.
- **Signer liveness**, per authority, since this node started: the proposals it missed (a height
  decided in a later round than the one it should have proposed in) and the precommits missing
  from the certificates that finalized blocks, as CometBFT's missed blocks and geth's
  `clique_status` report them.

`readiness` and `SignerLiveness` are pure; the node feeds them (node/daemon.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from healthnode.protocol.block import Block, CommitCertificate, quorum

BEAT_INTERVAL_S: Final = 1.0  # how often the event loop stamps that it runs, and readiness
LOOP_STALE_MS: Final = 10_000  # a loop silent this long is not alive
# A head older than the heartbeat period plus this is stale: one missed heartbeat round (the
# proposer down: a propose timeout and a round change, ~3 s at the defaults) fits well within it.
READY_MARGIN_MS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...]  # why not, in words (empty when ready)
    linked: int  # authorities this node counts as linked, itself included
    quorum: int
    head_age_ms: int

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "reasons": list(self.reasons), "linked": self.linked,
                "quorum": self.quorum, "head_age_ms": self.head_age_ms}


def readiness(*, authorities: Sequence[bytes], own_key: bytes, connected: Sequence[bytes],
              syncing: bool, head_time_ms: int, now_ms: int,
              heartbeat_ms: int) -> Readiness:
    """Whether a node with these facts is ready (module docstring), and why not."""
    members = set(authorities)
    linked = len(members & set(connected)) + (own_key in members)
    needed = quorum(len(members))
    head_age_ms = max(0, now_ms - head_time_ms)
    reasons = []
    if linked < needed:
        reasons.append(f"linked to {linked} of the {needed} authorities a quorum needs")
    if syncing:
        reasons.append("catching up by block sync")
    if head_age_ms > heartbeat_ms + READY_MARGIN_MS:
        reasons.append(f"the head is {head_age_ms // 1000} s old (at most "
                       f"{(heartbeat_ms + READY_MARGIN_MS) // 1000} s when ready)")
    return Readiness(not reasons, tuple(reasons), linked, needed, head_age_ms)


class Probes:
    """What the metrics thread answers on /healthz and /readyz: the loop's last stamp and the
    last readiness, set by the event loop and read by the thread (under a lock).

    The stamp's age is measured with the operating system's monotonic clock (`monotonic`), the
    one time both the loop and the thread read alike: the watchdog of a loop cannot use the
    loop's own clock, and the wall clock jumps when NTP steps it."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._beat_s: float | None = None
        self._readiness = Readiness(False, ("starting",), 0, 1, 0)

    def beat(self, state: Readiness) -> None:
        with self._lock:
            self._beat_s, self._readiness = self._monotonic(), state

    def alive(self) -> tuple[bool, str]:
        with self._lock:
            beat = self._beat_s
        if beat is None:
            return False, "starting"
        silent_ms = (self._monotonic() - beat) * 1000
        if silent_ms > LOOP_STALE_MS:
            return False, f"the event loop has not answered for {int(silent_ms) // 1000} s"
        return True, "alive"

    def ready(self) -> tuple[bool, dict[str, Any]]:
        alive, why = self.alive()
        with self._lock:
            state = self._readiness.to_json()
        if not alive:
            state["ready"] = False
            state["reasons"] = [why, *state["reasons"]]
        return bool(state["ready"]), state


@dataclass
class Missed:
    proposals: int = 0
    precommits: int = 0
    last_precommit_height: int | None = None  # the last certificate that held its precommit


@dataclass
class SignerLiveness:
    """Missed proposals and precommits per authority key, since this node started."""

    by_key: dict[bytes, Missed] = field(default_factory=dict)

    def block_committed(self, block: Block, certificate: CommitCertificate,
                        authorities: Sequence[bytes]) -> list[tuple[bytes, str]]:
        """Count what `authorities` (the set of the block's height) missed in deciding `block`;
        returns each miss as (key, "proposal" | "precommit")."""
        misses: list[tuple[bytes, str]] = []
        n = len(authorities)
        if n == 0:
            return misses
        signed = {sig.signer for sig in certificate.signatures}
        for round_ in range(certificate.round):  # each earlier round's proposer failed
            misses.append((authorities[(block.height + round_) % n], "proposal"))
        for key in authorities:
            missed = self.by_key.setdefault(key, Missed())
            if key in signed:
                missed.last_precommit_height = block.height
            else:
                misses.append((key, "precommit"))
        for key, what in misses:
            missed = self.by_key[key]
            if what == "proposal":
                missed.proposals += 1
            else:
                missed.precommits += 1
        return misses
