"""Why the ledger refuses: the named `Reason` of every refusal, the refusal a caller sees
(`Rejected`), the exception a handler raises before it writes anything (`Reject`), and a block
that cannot be applied (`BlockRejected`). Which refusals may pass later without the transaction
changing (`DEFERRABLE`) is stated here too, for the mempool and the proposer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from healthnode.errors import HealthnodeError


class Reason(enum.StrEnum):
    """Why a transaction is refused. Names are stable: metrics, logs and wallets show them."""

    # any kind
    BAD_SIGNATURE = "bad_signature"
    NONCE_REPLAYED = "nonce_replayed"  # at or below the signer's last nonce
    NONCE_GAP = "nonce_gap"  # ahead of the next nonce: may become valid later
    KEY_ROTATED = "key_rotated"  # the signer's node key was replaced (node.rotate)
    # provider.register / provider.revoke
    NOT_AUTHORITY = "not_authority"
    PROVIDER_IS_AUTHORITY = "provider_is_authority"
    PROVIDER_ALREADY_REGISTERED = "provider_already_registered"
    PROVIDER_KEY_REVOKED = "provider_key_revoked"
    UNKNOWN_PROVIDER = "unknown_provider"
    NOT_REGISTERING_AUTHORITY = "not_registering_authority"
    PROVIDER_ALREADY_REVOKED = "provider_already_revoked"
    # record.anchor
    AUTHOR_NOT_PROVIDER = "author_not_provider"
    NO_WRITE_GRANT = "no_write_grant"
    MISSING_PATIENT_KEY_WRAP = "missing_patient_key_wrap"
    DUPLICATE_KEY_WRAP = "duplicate_key_wrap"
    CIPHERTEXT_ALREADY_ANCHORED = "ciphertext_already_anchored"
    UNKNOWN_SUPERSEDED_RECORD = "unknown_superseded_record"
    SUPERSEDES_OTHER_PATIENT = "supersedes_other_patient"
    RECORD_ALREADY_SUPERSEDED = "record_already_superseded"
    SUPERSEDED_RECORD_ERASED = "superseded_record_erased"
    SIGNER_RECORDS_PER_BLOCK = "signer_records_per_block"
    SIGNER_BYTES_PER_BLOCK = "signer_bytes_per_block"
    SIGNER_RECORDS_PER_DAY = "signer_records_per_day"
    SIGNER_BYTES_PER_DAY = "signer_bytes_per_day"
    # consent.grant / consent.revoke
    SELF_GRANT = "self_grant"
    GRANTEE_NOT_PROVIDER = "grantee_not_provider"
    EMPTY_SCOPE = "empty_scope"
    UNKNOWN_SCOPE_RECORD = "unknown_scope_record"
    SCOPE_RECORD_OF_OTHER_PATIENT = "scope_record_of_other_patient"
    GRANT_ALREADY_EXPIRED = "grant_already_expired"
    KEY_WRAP_OUTSIDE_SCOPE = "key_wrap_outside_scope"
    UNKNOWN_GRANT = "unknown_grant"
    NOT_GRANT_OWNER = "not_grant_owner"
    GRANT_ALREADY_REVOKED = "grant_already_revoked"
    SIGNER_GRANTS_PER_DAY = "signer_grants_per_day"  # rules version 3 on
    # consent.revoke_provider (rules version 5 on)
    NO_GRANT_TO_REVOKE = "no_grant_to_revoke"  # none of the signer's to it is in force
    # access.log
    UNKNOWN_RECORD = "unknown_record"
    RECORD_PATIENT_MISMATCH = "record_patient_mismatch"
    RECORD_ERASED = "record_erased"
    PATIENT_READ_WITH_GRANT = "patient_read_with_grant"
    BREAK_GLASS_WITH_GRANT = "break_glass_with_grant"
    BREAK_GLASS_PURPOSE = "break_glass_purpose"
    READER_LACKS_EMERGENCY_ROLE = "reader_lacks_emergency_role"
    READER_NOT_PROVIDER = "reader_not_provider"
    MISSING_GRANT = "missing_grant"
    GRANT_NOT_FOR_READER = "grant_not_for_reader"
    GRANT_LACKS_READ = "grant_lacks_read"
    GRANT_REVOKED = "grant_revoked"
    GRANT_EXPIRED = "grant_expired"
    RECORD_OUT_OF_SCOPE = "record_out_of_scope"
    PURPOSE_NOT_GRANTED = "purpose_not_granted"  # rules version 5 on; the detail names the grant's
    BREAK_GLASS_NOT_ALLOWED = "break_glass_not_allowed"  # the patient's policy does not cover it
    NO_EMERGENCY_WRAP = "no_emergency_wrap"
    # emergency.policy, and a record.anchor's emergency wrap
    NO_EMERGENCY_KEY = "no_emergency_key"  # this network has no break-glass key
    BAD_EMERGENCY_WRAP = "bad_emergency_wrap"
    # its TDH2 proof fails for this record's label: copied, re-randomised or damaged
    EMERGENCY_WRAP_NOT_BOUND = "emergency_wrap_not_bound"
    EMERGENCY_WRAP_OUTSIDE_POLICY = "emergency_wrap_outside_policy"
    SIGNER_POLICIES_PER_DAY = "signer_policies_per_day"  # rules version 3 on
    # emergency.reshare
    RESHARE_NOT_DUE = "reshare_not_due"  # no authority change to re-share for at that epoch
    NOT_SHARE_HOLDER = "not_share_holder"
    ALREADY_DEALT = "already_dealt"
    BAD_RESHARE = "bad_reshare"
    # the emergency key's rounds (rules version 4 on): emergency.epoch_key, emergency.deal,
    # emergency.verdict, emergency.refresh
    ROUND_NOT_OPEN = "round_not_open"
    ROUND_NOT_IN_PHASE = "round_not_in_phase"
    ROUND_OPEN = "round_open"  # a refresh is asked for while a round is open
    NOT_ROUND_MEMBER = "not_round_member"
    ALREADY_IN_ROUND = "already_in_round"
    BAD_ROUND_TX = "bad_round_tx"
    BAD_COMPLAINT = "bad_complaint"
    COMPLAINT_UNFOUNDED = "complaint_unfounded"
    REFRESH_NOT_DUE = "refresh_not_due"
    # node.observer, node.announce (rules version 4 on)
    ALREADY_OBSERVER = "already_observer"
    NOT_OBSERVER = "not_observer"
    NOT_AUTHORITY_OR_OBSERVER = "not_authority_or_observer"
    DUPLICATE_ADDRESS = "duplicate_address"
    BAD_ADDRESS = "bad_address"
    OBSERVERS_FULL = "observers_full"
    ANNOUNCE_TOO_SOON = "announce_too_soon"
    CIPHERTEXT_NOT_PADDED = "ciphertext_not_padded"  # rules version 3 on (protocol/padding.py)
    # record.erase
    NOT_RECORD_OWNER = "not_record_owner"
    RECORD_ALREADY_ERASED = "record_already_erased"
    # record.purged
    RECORD_NOT_ERASED = "record_not_erased"
    ALREADY_PURGED = "already_purged"
    # a kind that the rules version in force does not have
    KIND_NOT_IN_RULES = "kind_not_in_rules"
    # validator.vote
    ALREADY_AUTHORITY = "already_authority"
    SUBJECT_NOT_AUTHORITY = "subject_not_authority"
    AUTHORITY_NAME_TAKEN = "authority_name_taken"
    AUTHORITY_NAME_MISMATCH = "authority_name_mismatch"
    LAST_AUTHORITY = "last_authority"
    AUTHORITIES_FULL = "authorities_full"
    ALREADY_VOTED = "already_voted"
    # node.rotate (rules version 4 on)
    ROTATION_PENDING = "rotation_pending"  # the signer's key has a rotation waiting already
    ROTATION_HEIGHT_TOO_SOON = "rotation_height_too_soon"
    ROTATION_HEIGHT_TOO_FAR = "rotation_height_too_far"
    ROTATION_KEY_IN_USE = "rotation_key_in_use"  # an authority's, a provider's, or taken already
    ROTATION_KEY_RETIRED = "rotation_key_retired"  # a key that a rotation retired
    BAD_ROTATION_SIGNATURE = "bad_rotation_signature"  # the new key's consent does not verify
    # representative.appoint, representative.end, representative.act (rules version 5 on)
    SELF_APPOINTMENT = "self_appointment"
    APPOINTMENT_ALREADY_ENDED = "appointment_already_ended"  # its end is not after the block time
    REPRESENTATIVES_FULL = "representatives_full"
    NO_APPOINTMENT = "no_appointment"  # none of this patient's for this key
    APPOINTMENT_NOT_IN_FORCE = "appointment_not_in_force"  # ended, or its date has passed
    NOT_APPOINTMENT_PARTY = "not_appointment_party"
    OUTSIDE_APPOINTMENT_SCOPE = "outside_appointment_scope"
    BAD_ACT = "bad_act"  # an act not the patient's as it would sign it, or the patient's own
    # rules.vote
    RULES_VERSION_NOT_NEXT = "rules_version_not_next"
    RULES_HEIGHT_TOO_SOON = "rules_height_too_soon"
    RULES_ALREADY_SCHEDULED = "rules_already_scheduled"


# Refusals that may pass later without the transaction changing: the mempool keeps these for a
# later block instead of dropping them.
DEFERRABLE: Final = frozenset({
    Reason.NONCE_GAP,
    Reason.SIGNER_RECORDS_PER_BLOCK,
    Reason.SIGNER_BYTES_PER_BLOCK,
})


@dataclass(frozen=True, slots=True)
class Rejected:
    """The one refusal of a transaction, from the ledger's rules or the mempool's bounds: a fixed
    `reason` (a `Reason`, or one of the mempool's names) and a `detail` for people. It travels
    typed to the wallet's message (node/client.py), never flattened and parsed back."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class Reject(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(reason, detail)
        self.rejected = Rejected(reason, detail)


class BlockRejected(HealthnodeError):
    """A block cannot be applied to this state; `reason` names why (invalid tx, wrong hash...),
    and `rejected` is the refusal of the transaction that failed, if one did."""

    def __init__(self, reason: str, rejected: Rejected | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rejected = rejected
