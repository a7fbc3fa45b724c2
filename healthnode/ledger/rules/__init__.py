"""Every rule of who may write, read, grant and erase: one place, pure functions.

Theory of operation
-------------------
`check_tx(view, tx, now)` answers whether `tx` would be accepted at block context `now` (height,
block time, authorities); the mempool asks it on entry. `apply_block(view, block)` runs every
transaction of a finalized or proposed block through the same code path in order, over an
`Overlay`, and returns the state changes and the state hash the block's header must carry.
`build_block` is the proposer's side: it picks the candidate transactions that pass, in order,
and produces the header fields from the same execution. There is no second implementation of any
rule anywhere: mempool, proposer, validator and catch-up all come through `_apply_tx`, which
checks the signer's nonce and hands the transaction to its kind's handler in `HANDLERS` below.

Each transaction handler first checks everything and raises `Reject` with a named `Reason`, and
only then writes; so a rejected transaction leaves no trace in the overlay.

Time in every rule is the block's time (`BlockContext.time_ms`), which the proposer sets and
consensus bounds: never a node's clock, so every node decides alike. So is the rules version
(`BlockContext.rules`): a rule that changes says from which version on, the authorities schedule a
version from a height by vote (`rules.vote`), and a node stops at a height whose version its
release does not carry (`RulesUnknown`) instead of deciding by other rules than its peers.

The state hash is the root of the state tree (`ledger/smt.py`): a Merkle root over every state
key and value, so two nodes whose state diverged disagree on the very next header, and one key's
value or absence can be proven against a header. A block's execution carries the tree nodes it
writes, for the store to write in the same batch as the block.

Where each rule lives (each module imports only those listed before it):

- `refusals`: the named reasons a transaction or block is refused;
- `budgets`: the per-signer anchoring quotas and the per-block tally;
- `block_context`: what a transaction is judged against (chain meta, authorities in force);
- `governance`: providers, the authorities' votes on their own set and on the rules version,
  double-sign evidence;
- `consent`: grants (in force, in scope, for which purposes) and `consent.grant` (either kind),
  `consent.revoke` and `consent.revoke_provider`;
- `emergency`: break-glass (policy, bound wraps, the check of a break-glass read) and
  re-sharing the emergency key to a new authority set (up to rules version 3);
- `rounds`: the emergency key's rounds from rules version 4 (its generation by the
  authorities, refreshes of its shares, re-sharing), and the end of every block that moves them;
- `peers`: observers vouched for by authorities and the addresses nodes announce (version 4);
- `rotation`: a hospital's replacement of its node key from rules version 4 (`node.rotate`), its
  taking effect at the end of the block before its height, and the refusal of every
  transaction of a key it retired;
- `representatives`: a patient's representatives from rules version 5 (`representative.appoint`,
  `representative.end`, and `representative.act`: a grant, revoke or policy applied as the
  patient's after the appointment's scope is checked), what each scope allows, and the patient's
  lines of acts by its representatives;
- `records`: `record.anchor`, `record.erase`, `record.purged` and the `access.log` of a read;
- `tree`: the state tree's root in the chain meta, and which keys are its leaves;
- `execution`: a block's execution, the proposer's building, the genesis state.

docs/ledger.md states these rules in words for a privacy officer.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any, Final

from healthnode.ledger.rules import (
    consent,
    emergency,
    execution,
    governance,
    peers,
    records,
    representatives,
    rotation,
    rounds,
)
from healthnode.ledger.rules.block_context import (
    BlockContext,
    NextContexts,
    RulesUnknown,
    authorities,
    authority_set,
    chain_meta,
    context,
    current_key,
    known_rules_at,
    next_context,
    pending_rotations,
    rotated_to,
    rules_at,
    rules_schedule,
)
from healthnode.ledger.rules.budgets import DEFAULT_QUOTAS, BlockTally, Quotas
from healthnode.ledger.rules.consent import (
    grant_valid_at,
    purpose_allowed,
    record_in_scope,
    with_codes,
)
from healthnode.ledger.rules.emergency import (
    EMERGENCY_ROLE_NEEDED,
    check_bound_wrap,
    emergency_allows,
    emergency_dealing_key,
    emergency_dealings,
    emergency_key,
    emergency_reader,
    reshare_target,
    wrap_label,
)
from healthnode.ledger.rules.execution import Built, Execution, genesis_state
from healthnode.ledger.rules.governance import active_provider, check_evidence, latest_rules
from healthnode.ledger.rules.refusals import DEFERRABLE, BlockRejected, Reason, Reject, Rejected
from healthnode.ledger.rules.tree import chain_meta_with, in_tree, tree_root, tree_root_at
from healthnode.ledger.state import NONCE, Overlay, StateView, read
from healthnode.protocol.block import Block, CommitCertificate, Evidence
from healthnode.protocol.genesis import ConsensusParams
from healthnode.protocol.state import SignerNonce
from healthnode.protocol.tx import (
    AccessLog,
    AnyTx,
    ConsentGrant,
    ConsentGrantPurposes,
    ConsentRevoke,
    ConsentRevokeProvider,
    EmergencyDeal,
    EmergencyEpochKey,
    EmergencyPolicy,
    EmergencyRefresh,
    EmergencyReshare,
    EmergencyVerdict,
    NodeAnnounce,
    NodeObserver,
    NodeRotate,
    ProviderRegister,
    ProviderRevoke,
    RecordAnchor,
    RecordErase,
    RecordPurged,
    RepresentativeAct,
    RepresentativeAppoint,
    RepresentativeEnd,
    RulesVote,
    ValidatorVote,
)

__all__ = [
    "DEFAULT_QUOTAS", "DEFERRABLE", "EMERGENCY_ROLE_NEEDED", "HANDLERS", "BlockContext",
    "BlockRejected", "Built", "Execution", "NextContexts", "Quotas", "Reason", "Reject",
    "Rejected", "RulesUnknown", "active_provider",
    "apply_block", "authorities", "authority_set", "build_block", "chain_meta", "chain_meta_with",
    "check_bound_wrap",
    "check_evidence", "check_tx", "context", "current_key", "emergency_allows",
    "emergency_dealing_key", "emergency_dealings", "emergency_key", "emergency_reader",
    "genesis_state", "grant_valid_at", "in_tree", "known_rules_at", "latest_rules",
    "next_context", "pending_rotations", "purpose_allowed", "record_in_scope", "reshare_target",
    "rotated_to",
    "rules_at", "rules_schedule", "tree_root", "tree_root_at", "with_codes", "wrap_label",
]

Handler = Callable[[Overlay, Any, BlockContext, BlockTally], None]

# Every transaction kind and the one function that checks and applies it.
HANDLERS: Final[Mapping[type[AnyTx], Handler]] = {
    # what the authorities decide
    ProviderRegister: governance.provider_register,
    ProviderRevoke: governance.provider_revoke,
    ValidatorVote: governance.validator_vote,
    RulesVote: governance.rules_vote,
    NodeRotate: rotation.node_rotate,
    # a patient's records, and the audit of each read
    RecordAnchor: records.record_anchor,
    RecordErase: records.record_erase,
    RecordPurged: records.record_purged,
    AccessLog: records.access_log,
    # a patient's consent
    ConsentGrant: consent.consent_grant,
    ConsentGrantPurposes: consent.consent_grant,  # rules version 5 on
    ConsentRevoke: consent.consent_revoke,
    ConsentRevokeProvider: consent.consent_revoke_provider,  # rules version 5 on
    # break-glass
    EmergencyPolicy: emergency.emergency_policy,
    EmergencyReshare: emergency.emergency_reshare,
    EmergencyEpochKey: rounds.epoch_key,
    EmergencyDeal: rounds.deal,
    EmergencyVerdict: rounds.verdict,
    EmergencyRefresh: rounds.refresh,
    # where the nodes are
    NodeObserver: peers.node_observer,
    NodeAnnounce: peers.node_announce,
    # a patient's representatives (rules version 5 on)
    RepresentativeAppoint: representatives.representative_appoint,
    RepresentativeEnd: representatives.representative_end,
    RepresentativeAct: representatives.representative_act,
}


def check_tx(view: StateView, tx: AnyTx, now: BlockContext,
             verify_signature: bool = True) -> Rejected | None:
    """None when `tx` would be accepted in a block at `now`, else why not. Writes nothing."""
    try:
        if verify_signature and not tx.signature_valid(now.chain_id):
            raise Reject(Reason.BAD_SIGNATURE, "signature does not verify for this chain")
        _apply_tx(Overlay(view), tx, now, BlockTally())
    except Reject as refusal:
        return refusal.rejected
    return None


def _apply_tx(state: Overlay, tx: AnyTx, now: BlockContext, tally: BlockTally) -> None:
    rotation.refuse_retired_signer(state, tx.signer, now)  # a retired key signs nothing, any kind
    signer_nonce = read(state, NONCE + tx.signer, SignerNonce)
    expected = (signer_nonce.nonce if signer_nonce else 0) + 1
    if tx.nonce < expected:
        raise Reject(Reason.NONCE_REPLAYED, f"nonce {tx.nonce} already used, next is {expected}")
    if tx.nonce > expected:
        raise Reject(Reason.NONCE_GAP, f"nonce {tx.nonce} is ahead, next is {expected}")
    HANDLERS[type(tx)](state, tx, now, tally)
    state.put(NONCE + tx.signer, SignerNonce(tx.nonce))


def apply_block(view: StateView, block: Block, *, verify_signatures: bool = True,
                params: ConsensusParams | None = None,
                quotas: Quotas = DEFAULT_QUOTAS, verified: Container[bytes] = ()) -> Execution:
    """`execution.apply_block`, every transaction through `_apply_tx`: the state changes and
    hash of `block` on top of `view`'s head, or BlockRejected. Writes nothing to `view`."""
    return execution.apply_block(view, block, _apply_tx, verify_signatures=verify_signatures,
                                 params=params, quotas=quotas, verified=verified)


def build_block(view: StateView, candidates: Iterable[AnyTx], *, height: int, time_ms: int,
                prev_hash: bytes, last_commit: CommitCertificate | None,
                evidence: Sequence[Evidence], proposer: bytes, params: ConsensusParams,
                verify_signatures: bool = True, quotas: Quotas = DEFAULT_QUOTAS) -> Built:
    """`execution.build_block`, every candidate through `_apply_tx`: the next block from
    `candidates` in order, keeping those that pass."""
    return execution.build_block(
        view, candidates, _apply_tx, height=height, time_ms=time_ms, prev_hash=prev_hash,
        last_commit=last_commit, evidence=evidence, proposer=proposer, params=params,
        verify_signatures=verify_signatures, quotas=quotas)
