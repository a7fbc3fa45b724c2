"""Every size and count limit of healthnode, in one place, each with its unit and its reason.

Decoders, the mempool, the ledger and the network all read their bounds from here, so a limit is
changed once and the whole system agrees. Names end with their unit (docs/architecture.md, rule 6).
"""

from typing import Final

KIB: Final = 1024
MIB: Final = 1024 * KIB

# --- encoding -------------------------------------------------------------------------------
# A transaction is small: keys, hashes and wrapped data keys. A grant that re-wraps the data keys
# of many records for a new doctor is the largest kind (512 records x ~120 bytes ~ 60 KiB).
TX_BYTES_MAX: Final = 64 * KIB
# One block: ~1 s of traffic at the 5,000 tx/s target with ~300-byte anchors is ~1.5 MiB; leave
# room for large grants without letting one block stall gossip for long.
BLOCK_BYTES_MAX: Final = 8 * MIB
BLOCK_TXS_MAX: Final = 10_000
# Evidence is rare; a cap keeps a byzantine proposer from filling blocks with it.
BLOCK_EVIDENCE_MAX: Final = 64
# Consensus messages other than the block itself (votes, proposals, evidence).
CONSENSUS_MESSAGE_BYTES_MAX: Final = 4 * KIB
# Genesis: authorities and parameters only.
GENESIS_BYTES_MAX: Final = 256 * KIB

# --- chain shape ----------------------------------------------------------------------------
# A permissioned network of hospitals; 128 authorities is far beyond any regional network and
# keeps a commit certificate under 128 x 100 bytes.
AUTHORITIES_MAX: Final = 128
CHAIN_ID_CHARS_MAX: Final = 64
NAME_CHARS_MAX: Final = 64  # hospital and provider display names

# --- transactions ---------------------------------------------------------------------------
NONCE_MAX: Final = 2**63 - 1
TIME_MS_MAX: Final = 2**63 - 1
HEIGHT_MAX: Final = 2**63 - 1
RULES_VERSION_MAX: Final = 2**16 - 1  # the ledger rules' versions (protocol/genesis.py lists them)
ROUND_MAX: Final = 2**31 - 1
TAGS_PER_RECORD_MAX: Final = 16  # blinded category tags on one record
KEY_WRAPS_PER_ANCHOR_MAX: Final = 64  # the patient plus current grantees
KEY_WRAP_BYTES_MAX: Final = 256  # a sealed box of a 32-byte key is 80 bytes
GRANT_RECORDS_MAX: Final = 512  # record ids named in one grant's scope
# Emergency wraps in one emergency.policy: 256 x ~214 bytes (record id, 176-byte bound wrap) is
# ~54 KiB, inside TX_BYTES_MAX. The wallet spreads more over several policy transactions.
EMERGENCY_WRAPS_PER_TX_MAX: Final = 256
GRANT_TAGS_MAX: Final = 32  # blinded tags named in one grant's scope
# Grants one consent.revoke_provider ends (rules version 5): it writes each, so it is bounded as a
# grant's scope is; a patient with more grants in force to one provider sends another (the
# wallet does).
GRANTS_REVOKED_PER_TX_MAX: Final = 512
SEALED_NOTE_BYTES_MAX: Final = 1 * KIB  # free text sealed to the patient (access reasons)
BLOB_BYTES_MAX: Final = 16 * MIB  # one record's ciphertext (a scanned letter, a small image)

# --- the encrypted record store (net/blobs.py) ---------------------------------------------
# A wallet uploads a ciphertext before it submits the anchor. Uploads nobody anchored are
# strangers' bytes on a hospital's disk: bounded per uploading key and in total, and deleted
# after an hour (a wallet anchors seconds after uploading). The defaults of the node's
# `[budgets].pending_upload_bytes_per_key` and `pending_upload_bytes`.
PENDING_UPLOAD_BYTES_PER_CLIENT_MAX: Final = 64 * MIB
PENDING_UPLOAD_BYTES_MAX: Final = 1024 * MIB
PENDING_UPLOAD_TTL_MS: Final = 3600 * 1000

# --- a node's door, over every key at once (ledger/door.py, the node's [budgets]) -----------------
# Keys cost nothing, so the ledger's budgets per key do not bound a flood of fresh keys; these
# do, per node and per window of its clock, for what patients' keys (neither providers nor
# authorities) send through its client door. The defaults of `[budgets]`: far above what one
# hospital's patients send (a patient grants or revokes a few times a year), and small beside
# what the node and the chain take. Every hospital keeps every transaction for good: a flood
# that takes every budget of one node adds at most 256 KiB a minute (360 MiB a day) to every
# hospital's chain. The bytes budget binds when a flood's transactions are large (a fresh key's
# is at most ~19 KiB: an anchor of 64 key wraps), the counts when they are small (most are
# under 1 KiB).
PATIENT_ANCHORS_PER_MINUTE: Final = 120
PATIENT_GRANTS_PER_MINUTE: Final = 120
PATIENT_REVOKES_PER_MINUTE: Final = 120
PATIENT_ERASURES_PER_MINUTE: Final = 120
PATIENT_POLICIES_PER_MINUTE: Final = 60
PATIENT_TX_BYTES_PER_MINUTE: Final = 256 * KIB
# Uploads per UTC day of the node's clock: a patient's wallet uploads a scan or a letter now and
# then; the hospital's providers (a lab system, imaging) upload far more, under a budget of
# their own that patients' keys cannot use up. An anchor is taken only by a node that holds its
# ciphertext, so what this node's door lets in a day bounds what it adds to every hospital's
# disk (every authority keeps a copy of each anchored ciphertext).
PATIENT_UPLOAD_BYTES_PER_DAY: Final = 2 * 1024 * MIB
UPLOAD_BYTES_PER_DAY: Final = 64 * 1024 * MIB
MINUTE_MS: Final = 60 * 1000

# --- key files ------------------------------------------------------------------------------
KEY_FILE_BYTES_MAX: Final = 16 * KIB
PASSPHRASE_CHARS_MIN: Final = 8

# --- per-signer quotas (ledger) -------------------------------------------------------------
# Every authority replicates every anchored ciphertext, so one key must not be able to fill every
# hospital's disk. Patients are unregistered keys anyone can make: a tight daily budget that is
# still far above what one person's care produces. Providers are vouched for by a hospital and
# may be a lab system anchoring thousands of results a day. Per-block caps keep one signer from
# taking a whole block. Days are UTC days of block time.
PATIENT_RECORDS_PER_BLOCK_MAX: Final = 16
PATIENT_RECORD_BYTES_PER_BLOCK_MAX: Final = 64 * MIB
PATIENT_RECORDS_PER_DAY_MAX: Final = 200
PATIENT_RECORD_BYTES_PER_DAY_MAX: Final = 512 * MIB
PROVIDER_RECORDS_PER_BLOCK_MAX: Final = 2_000
PROVIDER_RECORD_BYTES_PER_BLOCK_MAX: Final = 512 * MIB
PROVIDER_RECORDS_PER_DAY_MAX: Final = 200_000
PROVIDER_RECORD_BYTES_PER_DAY_MAX: Final = 64 * 1024 * MIB
DAY_MS: Final = 24 * 3600 * 1000
# A grant by category and an emergency policy without wraps need no record of their signer's, so
# any key, fresh or not, may sign them, and every hospital keeps each for good. From rules
# version 3 each signer has a daily budget of them, far above one person's care: a patient
# grants a few providers a year, and a wallet that wraps a long history for break-glass spreads
# it over policies of 256 wraps (64 a day wrap 16,384 records). Revocations and erasures have no
# budget of their own in the ledger: each undoes one grant or one record, at most once, so a
# key's are bounded by its grants and records, and a patient's withdrawal of consent or erasure
# is never refused for a budget (docs/ledger.md, "Daily and per-block budgets").
GRANTS_PER_DAY_MAX: Final = 200
EMERGENCY_POLICIES_PER_DAY_MAX: Final = 64
# Representatives (rules version 5 on, ledger/rules/representatives.py): a patient has at most
# this many appointments in force at once (a parent or two, a guardian, an attorney, a carer: a
# family needs a handful; every hospital keeps each for good). An appointment counts against the
# patient's daily budget of grants (an appointment is a wider grant), and a representative's
# grants and policies against its own.
REPRESENTATIVES_PER_PATIENT_MAX: Final = 8

# --- the emergency key's rounds (ledger/rules/rounds.py) ---------------------------------------
# A phase of a round (epoch keys, dealings, verdicts) ends as soon as every authority concerned
# has acted, or after this many blocks: at the default heartbeat of an idle network (a block every
# 5 s) a minute, ten times what an authority's node needs to see one block and get its
# transaction into the next, so that a node a few seconds behind still takes part.
KEY_ROUND_PHASE_BLOCKS: Final = 12
# ... and at least this much block time: a busy chain makes 12 blocks in a second or two, less
# than a node under load needs to see the phase and get its transaction in.
KEY_ROUND_PHASE_MS: Final = 60_000
# A round that would open for the same authority set as the round that just ended (a re-sharing
# that left an absent authority out, a first round that failed) waits this many blocks after it:
# five minutes at the idle heartbeat, instead of rounds back to back while a hospital is down.
KEY_ROUND_RETRY_BLOCKS: Final = 60
KEY_ROUND_RETRY_MS: Final = 300_000  # ... and five minutes of block time

# --- where the nodes are (ledger/rules/peers.py) -----------------------------------------------
# An announced address with /p2p/ and a peer id (60 characters more) fits a wallet's answer's
# 256 (protocol/client.py): a DNS name of 253 characters does not, a hospital's does.
PEER_ADDRESS_CHARS_MAX: Final = 190
PEER_ADDRESSES_MAX: Final = 4  # a node's announcement; the others dial the first, the rest is for
# people and later use (docs/operations.md)
# A node announces its addresses at most once in this many blocks (a restart with the same
# addresses announces nothing): a key of an authority or observer cannot flood the chain with them.
ANNOUNCE_INTERVAL_BLOCKS: Final = 10

# --- node key rotation (ledger/rules/rotation.py) -----------------------------------------------
# A `node.rotate` names the block its new key takes over at most this many blocks ahead: a week at
# the idle heartbeat (a block every 5 s), room for any maintenance window. A key has one pending
# rotation at a time, so this also bounds how long a rotation, the hospital's own or one signed
# with its stolen key, holds the key from another (the other authorities' removal vote ends
# either sooner: docs/threat-model.md).
KEY_ROTATION_NOTICE_BLOCKS_MAX: Final = 120_960
# Observers (node.observer): every authority serves each one the chain and dials it, so one
# faulty authority may not make that cost unbounded.
OBSERVERS_MAX: Final = 64
OBSERVERS_PER_SPONSOR_MAX: Final = 8
