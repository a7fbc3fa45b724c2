"""A node's door budgets: how much it takes over every key at once, in a window of its own clock
(the node's `[budgets]`; node/admission.py and net/blobs.py apply them).

Theory of operation
-------------------
Keys cost nothing. The ledger's budgets are per key (ledger/rules/budgets.py): they bound what one
key puts on the chain, and a flood of fresh keys passes them all. These bound what one node lets
in, whoever signs: each is node-wide, named by its key in the node's `[budgets]`
(home/config.py), and counts what this node took in the current window of its clock, a minute or
a UTC day (`WINDOWS`). They are not ledger rules: every node has its own figures and its own
clock, and nothing a node decides here reaches the chain but the transactions it took.

What they count is what patients' keys send through the node's client door: keys that are
neither active providers nor authorities (`is_patient`), which anyone can make. A provider is
vouched for by a hospital, and bounded per key by the ledger; an authority's own transactions
have room of their own in the mempool (ledger/mempool.py). Transactions relayed by another
authority were counted at the door they came in by, and the operator's door (the admin socket)
is the hospital's own.

- A transaction of a patient's key is checked against the budget of its kind and the bytes
  budget before the mempool sees it (`tx_refusal`), and charged only when the mempool took it
  (`charge_tx`): a refused one costs nothing of any budget.
- An upload is checked and charged by the blob keeper (net/blobs.py): a patient's against both
  upload budgets, any other key's against the one of every key. The day's counts are stored with
  the uploads, so a restart does not start the day again (`restore`). The minutes' counts are
  not kept: a restarted node takes at most one more minute's worth.

A refusal names its budget: its code is `budget_` and the budget's name, and its detail gives
the config key and the figure, for the wallet (which tries its next node: nothing ran here) and
for the node's rejection metric. Pure: no clock, no I/O; the shell passes the time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from healthnode import limits
from healthnode.ledger import rules
from healthnode.ledger.rules import Rejected
from healthnode.ledger.state import StateView
from healthnode.protocol.tx import (
    AnyTx,
    ConsentGrant,
    ConsentGrantPurposes,
    ConsentRevoke,
    ConsentRevokeProvider,
    EmergencyPolicy,
    RecordAnchor,
    RecordErase,
    RepresentativeAppoint,
    RepresentativeEnd,
    acted,
)

BUDGET_PREFIX: Final = "budget_"  # a refusal's code: this and the budget's name

# Every budget of a node's door: its name (its key in `[budgets]`), its window and what it counts.
WINDOWS: Final[Mapping[str, tuple[int, str]]] = {
    "patient_anchors_per_minute": (limits.MINUTE_MS, "record.anchor a minute from patients' keys"),
    "patient_grants_per_minute": (limits.MINUTE_MS, "consent.grant a minute from patients' keys"),
    "patient_revokes_per_minute": (limits.MINUTE_MS,
                                   "consent.revoke a minute from patients' keys"),
    "patient_erasures_per_minute": (limits.MINUTE_MS,
                                    "record.erase a minute from patients' keys"),
    "patient_policies_per_minute": (limits.MINUTE_MS,
                                    "emergency.policy a minute from patients' keys"),
    "patient_tx_bytes_per_minute": (limits.MINUTE_MS,
                                    "bytes of transactions a minute from patients' keys"),
    "patient_upload_bytes_per_day": (limits.DAY_MS,
                                     "bytes of uploads a day (UTC) from patients' keys"),
    "upload_bytes_per_day": (limits.DAY_MS, "bytes of uploads a day (UTC) from every key"),
}
# The kinds any key may sign, and the budget of each (the others are refused by the ledger to a
# patient's key anyway: only authorities sign them). An appointment is a wider grant and its end
# a revoke; a representative's act counts as the grant, revoke or policy it carries (`acted`).
TX_BUDGETS: Final[Mapping[type[AnyTx], str]] = {
    RecordAnchor: "patient_anchors_per_minute",
    ConsentGrant: "patient_grants_per_minute",
    ConsentGrantPurposes: "patient_grants_per_minute",
    ConsentRevoke: "patient_revokes_per_minute",
    ConsentRevokeProvider: "patient_revokes_per_minute",
    RecordErase: "patient_erasures_per_minute",
    EmergencyPolicy: "patient_policies_per_minute",
    RepresentativeAppoint: "patient_grants_per_minute",
    RepresentativeEnd: "patient_revokes_per_minute",
}
TX_BYTES: Final = "patient_tx_bytes_per_minute"
PATIENT_UPLOADS: Final = "patient_upload_bytes_per_day"
UPLOADS: Final = "upload_bytes_per_day"


def code(name: str) -> str:
    """The refusal code of the budget `name`."""
    return BUDGET_PREFIX + name


def is_budget_refusal(reason: str) -> bool:
    """Whether `reason` is a door budget's refusal (decided before any rule, whatever the
    transaction names)."""
    return reason.startswith(BUDGET_PREFIX)


def is_patient(view: StateView, signer: bytes) -> bool:
    """Whether `signer` is a patient's key as the door budgets count them: neither an active
    provider nor an authority of the next block."""
    return rules.active_provider(view, signer) is None and signer not in rules.authorities(
        view, rules.chain_meta(view).height + 1)


@dataclass(slots=True)
class _Used:
    window: int  # the window's index: the time divided by the window's length
    amount: int


class Budgets:
    """The door budgets of one node: their figures, and what each window took so far."""

    def __init__(self, figures: Mapping[str, int]) -> None:
        unknown = set(figures) - set(WINDOWS)
        assert not unknown, f"no such budget: {sorted(unknown)}"
        self.figures = dict(figures)
        self._used: dict[str, _Used] = {}

    def used(self, name: str, now_ms: int) -> int:
        """What the budget `name` has taken in the window of `now_ms`."""
        entry = self._used.get(name)
        window = now_ms // WINDOWS[name][0]
        return entry.amount if entry is not None and entry.window == window else 0

    def refusal(self, name: str, amount: int, now_ms: int) -> Rejected | None:
        """None when `amount` more fits the budget `name` in the window of `now_ms`; else the
        refusal that names it."""
        figure = self.figures.get(name)
        if figure is None or self.used(name, now_ms) + amount <= figure:
            return None
        return Rejected(code(name), f"[budgets].{name} = {figure}: this node takes at most that "
                                    f"many {WINDOWS[name][1]}, and has taken them; retry later "
                                    f"or use another node")

    def charge(self, name: str, amount: int, now_ms: int) -> None:
        """Count `amount` against the budget `name` in the window of `now_ms`."""
        if name not in self.figures:
            return
        window = now_ms // WINDOWS[name][0]
        self._used[name] = _Used(window, self.used(name, now_ms) + amount)

    def window_of(self, name: str, now_ms: int) -> int:
        """The index of the window of `now_ms` for the budget `name` (what `restore` takes)."""
        return now_ms // WINDOWS[name][0]

    def restore(self, name: str, window: int, amount: int) -> None:
        """What the budget `name` had taken in `window` before a restart (the shell stores the
        day's uploads)."""
        self._used[name] = _Used(window, amount)


def tx_refusal(budgets: Budgets, tx: AnyTx, size_bytes: int, now_ms: int) -> Rejected | None:
    """The refusal of a patient's transaction by the budget of its kind or of bytes, or None."""
    name = TX_BUDGETS.get(type(acted(tx)))
    refusal = budgets.refusal(name, 1, now_ms) if name is not None else None
    return refusal or budgets.refusal(TX_BYTES, size_bytes, now_ms)


def charge_tx(budgets: Budgets, tx: AnyTx, size_bytes: int, now_ms: int) -> None:
    """Count a patient's transaction that the mempool took."""
    name = TX_BUDGETS.get(type(acted(tx)))
    if name is not None:
        budgets.charge(name, 1, now_ms)
    budgets.charge(TX_BYTES, size_bytes, now_ms)
