"""What the authorities decide: who is an authority at a block (`require_authority`), the
providers they register and revoke (`provider.register`, `provider.revoke`, `active_provider`),
their votes on their own set (`validator.vote`: a quorum's change lands two heights later), their
votes on the rules (`rules.vote`: a quorum schedules the next rules version from a height), and
the evidence that one of them signed two conflicting messages (checked and recorded per block).
"""

from __future__ import annotations

from collections.abc import Sequence

from healthnode import limits
from healthnode.codec import pack
from healthnode.crypto import digest
from healthnode.ledger.rules.block_context import (
    BlockContext,
    authorities,
    authority_set,
    current_key,
    pending_rotations,
    rotated_to,
    rules_schedule,
)
from healthnode.ledger.rules.budgets import BlockTally
from healthnode.ledger.rules.refusals import BlockRejected, Reason, Reject
from healthnode.ledger.state import (
    AUTHORITY_SET,
    EVIDENCE,
    PROVIDER,
    RULES_PROPOSAL,
    RULES_SCHEDULE,
    VALIDATOR_PROPOSAL,
    Overlay,
    StateView,
    decode_value,
    height_bytes,
    read,
)
from healthnode.protocol import block as blocks
from healthnode.protocol.block import Evidence
from healthnode.protocol.evidence import check_evidence as evidence_rule
from healthnode.protocol.evidence import evidence_height, evidence_key, evidence_signer
from healthnode.protocol.genesis import RULES_OLDEST, Authority
from healthnode.protocol.schema import replace
from healthnode.protocol.state import (
    AuthoritySet,
    EvidenceEntry,
    ProviderState,
    RulesProposal,
    RulesScheduled,
    ValidatorProposal,
)
from healthnode.protocol.tx import ProviderRegister, ProviderRevoke, RulesVote, ValidatorVote

# A rules change is voted at least this many heights before it starts: never in the block that
# decides it, nor in the next (whose proposer may already have built it).
RULES_NOTICE_HEIGHTS_MIN = 2


def require_authority(signer: bytes, now: BlockContext) -> None:
    if signer not in now.authorities:
        raise Reject(Reason.NOT_AUTHORITY, f"{signer.hex()[:16]} is no authority at height "
                     f"{now.height}")


def provider_register(state: Overlay, tx: ProviderRegister, now: BlockContext,
                      _tally: BlockTally) -> None:
    require_authority(tx.signer, now)
    if tx.provider in now.authorities:
        raise Reject(Reason.PROVIDER_IS_AUTHORITY, "a node key cannot also be a provider key")
    existing = read(state, PROVIDER + tx.provider, ProviderState)
    if existing is not None and existing.revoked_height is not None:
        raise Reject(Reason.PROVIDER_KEY_REVOKED,
                     "this key was revoked and can never be registered again; make a new key")
    if existing is not None:
        raise Reject(Reason.PROVIDER_ALREADY_REGISTERED, "provider key is already registered")
    state.put(PROVIDER + tx.provider, ProviderState(
        tx.signer, tx.roles, tx.display_name, now.height, None))


def provider_revoke(state: Overlay, tx: ProviderRevoke, now: BlockContext,
                    _tally: BlockTally) -> None:
    require_authority(tx.signer, now)
    existing = read(state, PROVIDER + tx.provider, ProviderState)
    if existing is None:
        raise Reject(Reason.UNKNOWN_PROVIDER, "no such provider")
    # The registering hospital ends its own providers, under the node key it has now (it may
    # have rotated it since); one that has left the network can no longer, so then any current
    # authority may end them (no provider is left unrevocable).
    registrar = current_key(state, existing.authority)
    if registrar != tx.signer and registrar in now.authorities:
        raise Reject(Reason.NOT_REGISTERING_AUTHORITY,
                     "only the hospital that registered a provider may revoke it")
    if existing.revoked_height is not None:
        raise Reject(Reason.PROVIDER_ALREADY_REVOKED,
                     f"revoked at height {existing.revoked_height}")
    state.put(PROVIDER + tx.provider, replace(existing, revoked_height=now.height))


def active_provider(view: StateView, key: bytes) -> ProviderState | None:
    provider = read(view, PROVIDER + key, ProviderState)
    if provider is None or provider.revoked_height is not None:
        return None
    return provider


def proposal_id(action: str, subject: bytes, name: str) -> bytes:
    return digest(pack([action, subject, name]))


def _count_vote(open_votes: ValidatorProposal | RulesProposal | None, signer: bytes,
                now: BlockContext) -> tuple[tuple[bytes, ...], bool]:
    """The voters of a proposal with `signer` added (sorted), and whether they are a quorum of
    the authorities in force (votes of former authorities no longer count); ALREADY_VOTED if
    the signer was among them."""
    voters = set(open_votes.voters) if open_votes else set()
    if signer in voters:
        raise Reject(Reason.ALREADY_VOTED, "this authority already voted for this change")
    voters.add(signer)
    backing = sum(1 for voter in voters if voter in now.authorities)
    return tuple(sorted(voters)), backing >= blocks.quorum(len(now.authorities))


def validator_vote(state: Overlay, tx: ValidatorVote, now: BlockContext,
                   _tally: BlockTally) -> None:
    require_authority(tx.signer, now)
    # Judge against the latest decided set (a change decided at h-1 lands at h+1 <= h+2).
    future = authority_set(state, now.height + 2)
    if tx.action == "add":
        if tx.subject in future.keys:
            raise Reject(Reason.ALREADY_AUTHORITY, "the subject is already an authority")
        rotating = next((r for _, r in pending_rotations(state) if r.new_key == tx.subject), None)
        if rotating is not None:
            raise Reject(Reason.ALREADY_AUTHORITY, f"the subject takes an authority's place at "
                                                   f"height {rotating.height} (node.rotate)")
        retired = rotated_to(state, tx.subject)
        if retired is not None:
            raise Reject(Reason.KEY_ROTATED, f"the subject's key was rotated away at height "
                                             f"{retired.height} and signs nothing more")
        if any(a.name == tx.name for a in future.authorities):
            raise Reject(Reason.AUTHORITY_NAME_TAKEN, f"an authority is already named {tx.name!r}")
        if len(future.authorities) >= limits.AUTHORITIES_MAX:
            raise Reject(Reason.AUTHORITIES_FULL, f"at most {limits.AUTHORITIES_MAX} authorities")
    else:
        member = next((a for a in future.authorities if a.public_key == tx.subject), None)
        if member is None:
            raise Reject(Reason.SUBJECT_NOT_AUTHORITY, "the subject is no authority")
        if member.name != tx.name:
            raise Reject(Reason.AUTHORITY_NAME_MISMATCH,
                         f"the subject is named {member.name!r}, not {tx.name!r}")
        if len(future.authorities) == 1:
            raise Reject(Reason.LAST_AUTHORITY, "the last authority can never be removed")
    key = VALIDATOR_PROPOSAL + proposal_id(tx.action, tx.subject, tx.name)
    voters, decided = _count_vote(read(state, key, ValidatorProposal), tx.signer, now)
    if not decided:
        state.put(key, ValidatorProposal(tx.action, tx.subject, tx.name, voters))
        return
    if tx.action == "add":
        changed = (*future.authorities, Authority(tx.name, tx.subject))
    else:
        changed = tuple(a for a in future.authorities if a.public_key != tx.subject)
    state.put(AUTHORITY_SET + height_bytes(now.height + 2), AuthoritySet(changed))
    state.delete(key)


def latest_rules(view: StateView) -> tuple[int, int]:
    """The latest rules version in force or scheduled, and the height it starts at (0: the
    chain started with it and stored no schedule)."""
    schedule = rules_schedule(view)
    if not schedule:
        return RULES_OLDEST, 0
    start, scheduled = schedule[-1]
    return scheduled.rules_version, start


def rules_proposal_id(version: int, height: int) -> bytes:
    return digest(pack(["rules", version, height]))


def rules_vote(state: Overlay, tx: RulesVote, now: BlockContext, _tally: BlockTally) -> None:
    """A vote that the rules become `tx.rules_version` from `tx.height`. The versions go one by
    one, each starting after the one before it and at least RULES_NOTICE_HEIGHTS_MIN heights
    ahead; the votes of a quorum of the authorities in force for the same version and height
    schedule it, and end every other open proposal for that version. A version scheduled but
    not in force yet may be moved the same way to another height (more time for hospitals, or
    a faulty version pushed out until a release fixes it)."""
    require_authority(tx.signer, now)
    schedule = rules_schedule(state)
    latest, latest_start = latest_rules(state)
    moving = tx.rules_version == latest and latest_start > now.height
    if tx.rules_version != latest + 1 and not moving:
        raise Reject(Reason.RULES_VERSION_NOT_NEXT,
                     f"the next rules version is {latest + 1} (version {latest} is in force or "
                     f"scheduled)")
    before = (schedule[-2][0] if len(schedule) > 1 else 0) if moving else latest_start
    earliest = max(now.height + RULES_NOTICE_HEIGHTS_MIN, before + 1)
    if tx.height < earliest:
        raise Reject(Reason.RULES_HEIGHT_TOO_SOON,
                     f"a rules change voted at height {now.height} starts at height {earliest} "
                     f"or later")
    if moving and tx.height == latest_start:
        raise Reject(Reason.RULES_ALREADY_SCHEDULED,
                     f"version {latest} is scheduled from height {latest_start} already")
    key = RULES_PROPOSAL + rules_proposal_id(tx.rules_version, tx.height)
    voters, decided = _count_vote(read(state, key, RulesProposal), tx.signer, now)
    if not decided:
        state.put(key, RulesProposal(tx.rules_version, tx.height, voters))
        return
    if moving:
        state.delete(RULES_SCHEDULE + height_bytes(latest_start))
    state.put(RULES_SCHEDULE + height_bytes(tx.height),
              RulesScheduled(tx.rules_version, now.height))
    for other, value in list(state.scan(RULES_PROPOSAL)):  # this one among them, if stored
        if decode_value(value, RulesProposal, other).rules_version == tx.rules_version:
            state.delete(other)


def check_evidence(view: StateView, evidence: Evidence, now: BlockContext) -> str | None:
    """None when `evidence` in a block at `now` proves an authority signed two conflicting
    messages and is not committed yet, else why not (the rule itself: protocol/evidence.py)."""
    height = evidence_height(evidence)
    if height > now.height:
        return "evidence from a future height"
    problem = evidence_rule(evidence, authorities(view, height),
                            lambda message: message.signature_valid(now.chain_id))
    if problem is not None:
        return problem.detail
    if view.get(EVIDENCE + evidence_key(evidence)) is not None:
        return "the evidence is already committed"
    return None


def apply_evidence(state: Overlay, evidence: Sequence[Evidence], now: BlockContext) -> None:
    for index, item in enumerate(evidence):
        problem = check_evidence(state, item, now)
        if problem is not None:
            raise BlockRejected(f"evidence {index}: {problem}")
        offender = evidence_signer(item)
        key = evidence_key(item)
        state.put(EVIDENCE + key, EvidenceEntry(offender, now.height, key))
