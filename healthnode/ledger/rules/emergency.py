"""Break-glass (docs/break-glass.md): the emergency key in force and a record's wrap bound to it
(threshold.py, "Bound wraps"), a patient's `emergency.policy`, re-sharing the key to a new
authority set (`emergency.reshare`, `reshare_target`), and the check of a break-glass
`access.log`.
"""

from __future__ import annotations

from typing import Final

from healthnode.crypto import threshold
from healthnode.ledger.rules.block_context import BlockContext
from healthnode.ledger.rules.budgets import BlockTally, charge_policy
from healthnode.ledger.rules.consent import own_record
from healthnode.ledger.rules.governance import active_provider
from healthnode.ledger.rules.refusals import Reason, Reject
from healthnode.ledger.state import (
    AUTHORITY_SET,
    DAILY_TXS,
    EMERGENCY_DEALING,
    EMERGENCY_KEY,
    EMERGENCY_POLICY,
    EMERGENCY_ROUND,
    EMERGENCY_WRAP,
    Overlay,
    StateView,
    decode_value,
    height_bytes,
    read,
)
from healthnode.protocol.genesis import EmergencyKey, ShareCommitment
from healthnode.protocol.state import (
    AuthoritySet,
    EmergencyDealingState,
    EmergencyKeyState,
    EmergencyPolicyState,
    EmergencyRound,
    EmergencyWrapState,
    RecordState,
)
from healthnode.protocol.tx import EMERGENCY_PURPOSES, AccessLog, EmergencyPolicy, EmergencyReshare

EMERGENCY_ROLE_NEEDED: Final = (
    "only an active provider with the emergency role may break the glass")


def emergency_key(view: StateView) -> EmergencyKeyState | None:
    return read(view, EMERGENCY_KEY, EmergencyKeyState)


def no_key(view: StateView) -> Reject:
    """The refusal of what needs the emergency key while there is none: while the authorities
    generate it (rules version 4, ledger/rules/rounds.py), it says so."""
    found = read(view, EMERGENCY_ROUND, EmergencyRound)
    if found is not None and found.purpose == "found" and found.phase != "closed":
        return Reject(Reason.NO_EMERGENCY_KEY,
                      f"the authorities are generating the emergency key (round {found.number}, "
                      f"{found.phase} phase); break-glass and emergency policies work once it "
                      f"is made")
    return Reject(Reason.NO_EMERGENCY_KEY, "this network has no emergency key")


def wrap_label(chain_id: str, record: RecordState) -> threshold.WrapLabel:
    """The label a record's emergency wrap is bound to (threshold.py, "Bound wraps")."""
    return threshold.WrapLabel(chain_id, record.patient, record.ciphertext_hash)


def check_bound_wrap(view: StateView, wrap: bytes, label: threshold.WrapLabel) -> bytes:
    """The wrap's `R` when `wrap` is well formed and bound to `label` under the emergency key in
    force; a Reject naming what failed otherwise. The ledger calls it wherever it admits a wrap,
    and a holder again before it releases a share."""
    key = emergency_key(view)
    if key is None:
        raise no_key(view)
    try:
        return threshold.check_wrap(key.key.public_key, wrap, label)
    except threshold.WrapNotBound as error:
        raise Reject(Reason.EMERGENCY_WRAP_NOT_BOUND, str(error)) from None
    except threshold.ThresholdError as error:
        raise Reject(Reason.BAD_EMERGENCY_WRAP, str(error)) from None


def reshare_target(view: StateView) -> tuple[int, AuthoritySet] | None:
    """The authority set (by its first height) the emergency key must be re-shared to: the
    latest one scheduled after the key's epoch, if its members differ from the share holders."""
    key = emergency_key(view)
    if key is None:
        return None
    latest: tuple[int, AuthoritySet] | None = None
    for state_key, raw in view.scan(AUTHORITY_SET):
        height = int.from_bytes(state_key[len(AUTHORITY_SET):], "big")
        if height > key.epoch:
            latest = (height, decode_value(raw, AuthoritySet, state_key))
    if latest is None:
        return None
    holders = {c.authority for c in key.key.commitments}
    return None if set(latest[1].keys) == holders else latest


def emergency_dealing_key(epoch: int, dealer_index: int) -> bytes:
    return EMERGENCY_DEALING + height_bytes(epoch) + dealer_index.to_bytes(2, "big")


def emergency_dealings(view: StateView, epoch: int) -> list[EmergencyDealingState]:
    prefix = EMERGENCY_DEALING + height_bytes(epoch)
    return [decode_value(raw, EmergencyDealingState, key) for key, raw in view.scan(prefix)]


def emergency_reshare(state: Overlay, tx: EmergencyReshare, now: BlockContext,
                      _tally: BlockTally) -> None:
    if now.rules >= 4:
        raise Reject(Reason.KIND_NOT_IN_RULES, "from rules version 4 the key moves to a new "
                                               "authority set in a round (emergency.deal)")
    key = emergency_key(state)
    if key is None:
        raise no_key(state)
    target = reshare_target(state)
    if target is None or target[0] != tx.epoch:
        raise Reject(Reason.RESHARE_NOT_DUE, f"no re-sharing is due for epoch {tx.epoch}"
                     + (f" (due: {target[0]})" if target else ""))
    mine = [c for c in key.key.commitments if c.authority == tx.signer]
    if not mine:
        raise Reject(Reason.NOT_SHARE_HOLDER, "only a holder of an emergency share re-deals")
    holder = mine[0]
    if state.get(emergency_dealing_key(tx.epoch, holder.index)) is not None:
        raise Reject(Reason.ALREADY_DEALT, f"share {holder.index} is already re-dealt")
    new_keys = target[1].keys
    new_threshold = threshold.quorum_threshold(len(new_keys))
    if len(tx.coefficients) != new_threshold:
        raise Reject(Reason.BAD_RESHARE, f"expected {new_threshold} coefficient commitments")
    if tx.coefficients[0] != holder.commitment:
        raise Reject(Reason.BAD_RESHARE, "the dealing must re-share the dealer's own share")
    if tuple(s.recipient for s in tx.sealed_shares) != new_keys:
        raise Reject(Reason.BAD_RESHARE, "one sealed sub-share per new authority, in order")
    try:
        for point in tx.coefficients:
            threshold.check_point(point, "a coefficient commitment")
    except threshold.ThresholdError as error:
        raise Reject(Reason.BAD_RESHARE, str(error)) from None
    state.put(emergency_dealing_key(tx.epoch, holder.index), EmergencyDealingState(
        tx.epoch, holder.index, tx.coefficients, tx.sealed_shares))
    dealings = emergency_dealings(state, tx.epoch)
    if len(dealings) < key.key.threshold:
        return
    # Enough holders dealt: the new set holds the same key from now on.
    commitments = threshold.reshared_commitments(
        {d.dealer_index: d.coefficients for d in dealings}, len(new_keys))
    state.put(EMERGENCY_KEY, EmergencyKeyState(
        EmergencyKey(key.key.public_key, new_threshold, tuple(
            ShareCommitment(authority, index + 1, commitment)
            for index, (authority, commitment) in enumerate(zip(new_keys, commitments,
                                                                strict=True)))),
        tx.epoch, tuple(sorted(d.dealer_index for d in dealings))))


def emergency_policy(state: Overlay, tx: EmergencyPolicy, now: BlockContext,
                     _tally: BlockTally) -> None:
    policy(state, tx, tx.signer, now)


def policy(state: Overlay, tx: EmergencyPolicy, payer: bytes, now: BlockContext) -> None:
    """The patient's (`tx.signer`'s) policy, charged to `payer`'s daily budget: the patient's
    own, or a representative's (`ledger/rules/representatives.py`)."""
    patient = tx.signer
    if emergency_key(state) is None:
        raise no_key(state)
    wrapped = [wrap.record_id for wrap in tx.wraps]
    if len(set(wrapped)) != len(wrapped):
        raise Reject(Reason.DUPLICATE_KEY_WRAP, "two emergency wraps for one record")
    for wrap in tx.wraps:
        record = own_record(state, patient, wrap.record_id)
        if record.erased_height is not None:
            raise Reject(Reason.RECORD_ERASED, f"record {wrap.record_id.hex()[:16]} was erased")
        if not set(record.tags) <= set(tx.allowed_tags):
            raise Reject(Reason.EMERGENCY_WRAP_OUTSIDE_POLICY,
                         "an emergency wrap for a record the policy does not cover")
        check_bound_wrap(state, wrap.wrap, wrap_label(now.chain_id, record))
    if now.rules >= 3:  # a policy of no wraps is valid for any key: a daily budget per signer
        state.put(DAILY_TXS + payer, charge_policy(state, payer, now.quotas, now.time_ms))
    state.put(EMERGENCY_POLICY + patient, EmergencyPolicyState(tx.allowed_tags, now.height))
    for wrap in tx.wraps:
        state.put(EMERGENCY_WRAP + wrap.record_id, EmergencyWrapState(wrap.wrap, now.height))


def emergency_reader(view: StateView, reader: bytes) -> bool:
    """Whether `reader` may break the glass at all: an active provider with the emergency
    role. Public state, and the same whatever record it asks about."""
    provider = active_provider(view, reader)
    return provider is not None and "emergency" in provider.roles


def emergency_allows(view: StateView, patient: bytes, tags: tuple[bytes, ...]) -> bool:
    """Whether the patient's emergency policy covers a record of these (blinded) tags."""
    policy = read(view, EMERGENCY_POLICY + patient, EmergencyPolicyState)
    return policy is not None and set(tags) <= set(policy.allowed_tags)


def check_break_glass(state: Overlay, tx: AccessLog, record: RecordState) -> None:
    if tx.grant_id is not None:
        raise Reject(Reason.BREAK_GLASS_WITH_GRANT, "break-glass is access without a grant")
    if tx.purpose not in EMERGENCY_PURPOSES:
        raise Reject(Reason.BREAK_GLASS_PURPOSE, "break-glass access has an emergency purpose: "
                     + ", ".join(sorted(EMERGENCY_PURPOSES)))
    if not emergency_reader(state, tx.reader):
        raise Reject(Reason.READER_LACKS_EMERGENCY_ROLE, EMERGENCY_ROLE_NEEDED)
    if not emergency_allows(state, tx.patient, record.tags):
        raise Reject(Reason.BREAK_GLASS_NOT_ALLOWED,
                     "the patient's emergency policy does not cover this record's categories")
    if state.get(EMERGENCY_WRAP + tx.record_id) is None:
        raise Reject(Reason.NO_EMERGENCY_WRAP,
                     "the record carries no emergency wrap (added before the policy covered it)")
