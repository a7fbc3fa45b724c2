"""Per-signer budgets, the ledger's own: the anchoring quotas of a patient and of a provider,
per block and per day of block time, the per-block tally that is not state, and the charge of one
`record.anchor` against both; and, from rules version 3, each signer's daily budget of grants and
of emergency policies (limits.py explains the figures).

They are rules: every node applies the same figures to the same blocks, so they are not in a
node's config, and changing one is a rules change. What one node takes at its door, whoever
signs, is the node's own business (ledger/door.py, the node's `[budgets]`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from healthnode import limits
from healthnode.ledger.rules.refusals import Reason, Reject
from healthnode.ledger.state import DAILY_TXS, QUOTA, Overlay, read
from healthnode.protocol.schema import replace
from healthnode.protocol.state import SignerDailyTxs, SignerQuota
from healthnode.protocol.tx import RecordAnchor


@dataclass(frozen=True, slots=True)
class Quotas:
    """Per-signer anchoring budgets (limits.py explains the defaults)."""

    patient_records_per_block: int = limits.PATIENT_RECORDS_PER_BLOCK_MAX
    patient_bytes_per_block: int = limits.PATIENT_RECORD_BYTES_PER_BLOCK_MAX
    patient_records_per_day: int = limits.PATIENT_RECORDS_PER_DAY_MAX
    patient_bytes_per_day: int = limits.PATIENT_RECORD_BYTES_PER_DAY_MAX
    provider_records_per_block: int = limits.PROVIDER_RECORDS_PER_BLOCK_MAX
    provider_bytes_per_block: int = limits.PROVIDER_RECORD_BYTES_PER_BLOCK_MAX
    provider_records_per_day: int = limits.PROVIDER_RECORDS_PER_DAY_MAX
    provider_bytes_per_day: int = limits.PROVIDER_RECORD_BYTES_PER_DAY_MAX
    grants_per_day: int = limits.GRANTS_PER_DAY_MAX  # rules version 3 on
    emergency_policies_per_day: int = limits.EMERGENCY_POLICIES_PER_DAY_MAX  # likewise


DEFAULT_QUOTAS: Final = Quotas()


@dataclass(slots=True)
class BlockTally:
    """Per-block counters that are not state: records and bytes anchored by each signer."""

    records: dict[bytes, int] = field(default_factory=dict)
    ciphertext_bytes: dict[bytes, int] = field(default_factory=dict)


def charge_quota(state: Overlay, tx: RecordAnchor, quotas: Quotas, time_ms: int,
                 tally: BlockTally, provider: bool) -> SignerQuota:
    """Check the signer's budgets (`quotas`, for a block at `time_ms`) and return its day's
    counters with this record added."""
    q = quotas
    records_block, bytes_block, records_day, bytes_day = (
        (q.provider_records_per_block, q.provider_bytes_per_block,
         q.provider_records_per_day, q.provider_bytes_per_day) if provider else
        (q.patient_records_per_block, q.patient_bytes_per_block,
         q.patient_records_per_day, q.patient_bytes_per_day))
    if tally.records.get(tx.signer, 0) + 1 > records_block:
        raise Reject(Reason.SIGNER_RECORDS_PER_BLOCK, f"at most {records_block} records per block")
    if tally.ciphertext_bytes.get(tx.signer, 0) + tx.ciphertext_bytes > bytes_block:
        raise Reject(Reason.SIGNER_BYTES_PER_BLOCK, f"at most {bytes_block} bytes per block")
    day = time_ms // limits.DAY_MS
    used = read(state, QUOTA + tx.signer, SignerQuota)
    if used is None or used.day != day:
        used = SignerQuota(day, 0, 0)
    if used.records + 1 > records_day:
        raise Reject(Reason.SIGNER_RECORDS_PER_DAY, f"at most {records_day} records per day")
    if used.ciphertext_bytes + tx.ciphertext_bytes > bytes_day:
        raise Reject(Reason.SIGNER_BYTES_PER_DAY, f"at most {bytes_day} bytes per day")
    return SignerQuota(day, used.records + 1, used.ciphertext_bytes + tx.ciphertext_bytes)


def _today(state: Overlay, signer: bytes, time_ms: int) -> SignerDailyTxs:
    day = time_ms // limits.DAY_MS
    used = read(state, DAILY_TXS + signer, SignerDailyTxs)
    return used if used is not None and used.day == day else SignerDailyTxs(day, 0, 0)


def charge_grant(state: Overlay, signer: bytes, quotas: Quotas, time_ms: int) -> SignerDailyTxs:
    """Check the signer's daily budget of `consent.grant` (for a block at `time_ms`) and return
    its day's counters with this grant added."""
    used = _today(state, signer, time_ms)
    if used.grants + 1 > quotas.grants_per_day:
        raise Reject(Reason.SIGNER_GRANTS_PER_DAY,
                     f"at most {quotas.grants_per_day} grants per signer per day")
    return replace(used, grants=used.grants + 1)


def charge_policy(state: Overlay, signer: bytes, quotas: Quotas, time_ms: int) -> SignerDailyTxs:
    """Check the signer's daily budget of `emergency.policy` (for a block at `time_ms`) and
    return its day's counters with this policy added."""
    used = _today(state, signer, time_ms)
    if used.emergency_policies + 1 > quotas.emergency_policies_per_day:
        raise Reject(Reason.SIGNER_POLICIES_PER_DAY,
                     f"at most {quotas.emergency_policies_per_day} emergency policies per signer "
                     f"per day")
    return replace(used, emergency_policies=used.emergency_policies + 1)
