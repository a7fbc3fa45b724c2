"""The wallet's operations: add, read, list and erase records; grant, revoke, list grants; audit.

Each runs on one node through `CheckedNode` (wallet/checked.py: what the wallet believes, and
why) and returns a JSON-ready dict (the CLI prints it). Everything secret happens here, on the
user's machine: the record is encrypted and its key wrapped before upload; a read's key wrap is
opened here; sealed notes are opened here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import nacl.exceptions

from healthnode import crypto, limits
from healthnode.clock import now_ms
from healthnode.crypto import threshold
from healthnode.errors import HealthnodeError
from healthnode.ledger import rules
from healthnode.ledger.reading import NOT_READABLE
from healthnode.ledger.state import (
    ACT_COUNT,
    ACT_LINE,
    APPOINTMENT,
    EMERGENCY_KEY,
    EMERGENCY_POLICY,
    GRANT,
    PURGE,
    RECORD,
    height_bytes,
)
from healthnode.protocol.client import (
    AuditItem,
    AuditResponse,
    EmergencyHolder,
    EmergencyInfoRequest,
    EmergencyInfoResponse,
    FetchRequest,
    FetchResponse,
    QueryRequest,
    ShareRequest,
    ShareResponse,
    UploadRequest,
    UploadResponse,
)
from healthnode.protocol.genesis import EmergencyKey
from healthnode.protocol.state import (
    ActLine,
    AppointmentState,
    EmergencyKeyState,
    GrantState,
    PurgeState,
    RecordState,
    act_count_decode,
)
from healthnode.protocol.tx import (
    ACT_UNSIGNED,
    PURPOSE_CODES,
    PURPOSES,
    REPRESENTATIVE_SCOPES,
    ConsentGrant,
    ConsentGrantPurposes,
    ConsentRevoke,
    ConsentRevokeProvider,
    EmergencyPolicy,
    EmergencyWrap,
    KeyWrap,
    RecordAnchor,
    RecordErase,
    RecordKeyWrap,
    RepresentativeAct,
    RepresentativeAppoint,
    RepresentativeEnd,
)
from healthnode.wallet import sealing
from healthnode.wallet.checked import CheckedNode
from healthnode.wallet.connection import NodeConnection, Refused, WalletError
from healthnode.wallet.fhir import fhir_resource_type, validate_fhir

# The wallet adds the AEAD nonce and tag, and at least one byte of padding (16 MiB is a padded
# length itself).
RECORD_PLAINTEXT_BYTES_MAX: Final = limits.BLOB_BYTES_MAX - sealing.NONCE_BYTES - \
    sealing.TAG_BYTES - 1
# A record's versions that `record history` follows at most (an amendment chain longer than
# this is a node's lie or a patient's decade of amendments; either way the wallet stops).
HISTORY_VERSIONS_MAX: Final = 1000
# The end of a height in an audit cursor (AUDIT keys are patient | height | index).
AUDIT_INDEX_END: Final = b"\xff" * 4
# What a grant allows when the patient names no purpose: treatment alone (docs/wallet.md). Any
# other use (research, payment, ...) is the patient's to name.
DEFAULT_GRANT_PURPOSES: Final = ("treatment",)
DURATION: Final = re.compile(r"(\d{1,6})([smhdw])")
DURATION_MS: Final = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


# The act lines' kinds (protocol/state.py ActLine), as the audit names them.
ACT_NAMES: Final = {RecordAnchor.KIND: "record.anchor", ConsentGrant.KIND: "consent.grant",
                    ConsentGrantPurposes.KIND: "consent.grant_purposes",
                    ConsentRevoke.KIND: "consent.revoke",
                    ConsentRevokeProvider.KIND: "consent.revoke_provider",
                    EmergencyPolicy.KIND: "emergency.policy"}


def parse_duration_ms(text: str, option: str = "--expires") -> int:
    """`45s`, `90m`, `12h`, `30d`, `8w` in milliseconds."""
    match = DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise HealthnodeError(f"{option} {text!r}: use a number and a unit, e.g. 30d, 12h, 90m")
    return int(match.group(1)) * DURATION_MS[match.group(2)]


def _readable(record_id: bytes, record: RecordState) -> None:
    """WalletError unless the proven record may be read as it is: not erased, the newest."""
    short = record_id.hex()[:16]
    if record.erased_height is not None:
        raise Refused("record_erased", f"record {short} was erased at height "
                                       f"{record.erased_height} (`healthnode record erasure` "
                                       f"shows which nodes have purged it)")
    if record.superseded_by is not None:
        raise Refused("record_superseded", f"record {short} was amended: read its newest "
                                           f"version, {record.superseded_by.hex()}")


def _sealed_note(patient: bytes, note: str) -> bytes:
    if len(note.encode()) > limits.SEALED_NOTE_BYTES_MAX:
        raise HealthnodeError(f"--note is longer than {limits.SEALED_NOTE_BYTES_MAX} bytes")
    return crypto.seal(patient, note.encode())


@dataclass
class Wallet(CheckedNode):
    """A patient's or provider's wallet: add, read, list and erase records; grant and revoke;
    the emergency policy and break-glass; the audit trail. Each checks what it acts on through
    `CheckedNode` (wallet/checked.py)."""

    async def _tag_key_for(self, patient: bytes) -> bytes:
        """The patient's tag key: ours if we are the patient, else from its write grant (the
        grant proven on chain and in force), else from its appointment of us with the scope
        `write` (proven; the ledger judges it in force by block time)."""
        if patient == self.me:
            return sealing.tag_key(self.identity)
        now = now_ms()
        for item in await self._grants("grants", None):
            state, grant = item.state, item.consent
            if (state.patient == patient and state.grantee == self.me
                    and "write" in state.actions and rules.grant_valid_at(state, now)
                    and grant.tag_key_wrap is not None):
                await self._proven_grants([item])
                try:
                    return crypto.unseal(self.identity, grant.tag_key_wrap)
                except nacl.exceptions.CryptoError:
                    raise WalletError("the write grant's tag key does not open with this key") \
                        from None
        try:  # a representative that may write takes the tag key from its appointment
            return await self._patient_tag_key(patient, "write")
        except (WalletError, Refused):
            pass
        raise WalletError("no write grant from this patient in force: the patient must grant "
                          "you write access (healthnode grant --write), or appoint you with "
                          "--scope write, before you add records")

    # --- records ----------------------------------------------------------------------------

    async def add_record(self, patient: bytes, categories: list[str], plaintext: bytes,
                         supersedes: bytes | None = None) -> dict[str, Any]:
        if not categories:
            raise HealthnodeError("give at least one --category")
        if len(plaintext) > RECORD_PLAINTEXT_BYTES_MAX:
            raise HealthnodeError(f"the file is larger than {RECORD_PLAINTEXT_BYTES_MAX} bytes")
        if not plaintext:
            raise HealthnodeError("the file is empty")
        resource_type = None
        if fhir_resource_type(plaintext) is not None:
            resource_type = validate_fhir(plaintext)
        for name in categories:
            sealing.check_category(name)
        tag_key = await self._tag_key_for(patient)
        tags = tuple(sorted({sealing.blind(tag_key, name) for name in categories}))
        # The patient, and every reader the patient has granted this category to: each grant
        # proven on chain and in force, so that a node cannot slip in a reader of its own.
        listed = [item for item in await self._grants("patient_grants", patient)
                  if "read" in item.state.actions and set(tags) <= set(item.state.scope_tags)]
        granted, values = await self._proven_grants(
            listed, [EMERGENCY_KEY, EMERGENCY_POLICY + patient])
        readers = [patient]
        for state in granted:
            if state.patient != patient:
                raise self.connection.lied("it listed another patient's grant")
            if "read" in state.actions and set(tags) <= set(state.scope_tags) \
                    and state.grantee not in readers:
                readers.append(state.grantee)
        data_key = sealing.new_data_key()
        ciphertext = sealing.encrypt_record(data_key, patient, plaintext)
        # The patient's emergency policy covers these categories: wrap for the emergency key
        # (both proven: a node cannot substitute a key of its own).
        policy = await self._proven_policy(patient, values)
        uploaded = self._expect(await self.connection.request(UploadRequest(ciphertext)),
                                UploadResponse)
        ciphertext_hash = crypto.digest(ciphertext)
        if uploaded.ciphertext_hash != ciphertext_hash:
            raise WalletError("the node answered the upload with another ciphertext hash than "
                              "that of the bytes sent; nothing was anchored")
        nonce = await self._next_nonce()
        emergency_wrap = None
        if policy.key is not None and set(tags) <= set(policy.allowed_tags) and \
                policy.allowed_tags:
            emergency_wrap = threshold.wrap(policy.key.key.public_key, data_key,
                                            threshold.WrapLabel(self.chain_id, patient,
                                                                ciphertext_hash))
        wraps = tuple(KeyWrap(reader, sealing.wrap_key(reader, data_key))
                      for reader in readers[:limits.KEY_WRAPS_PER_ANCHOR_MAX])
        anchor = RecordAnchor(self.me, nonce, patient, ciphertext_hash, len(ciphertext), tags,
                              wraps, supersedes, emergency_wrap).sign(self.identity, self.chain_id)
        final = await self._submit(anchor)
        return {"record_id": anchor.hash.hex(), "height": final.height,
                "patient": patient.hex(), "categories": sorted(set(categories)),
                "ciphertext_hash": uploaded.ciphertext_hash.hex(),
                "ciphertext_bytes": len(ciphertext), "fhir": resource_type,
                "readers": len(readers), "emergency_wrap": emergency_wrap is not None}

    async def get_record(self, record_id: bytes, purpose: str,
                         note: str | None) -> tuple[bytes, dict[str, Any]]:
        # The record is on chain, not erased, and the newest version: proven before the read
        # is logged, so that a node cannot pass off content of its own or an older version.
        record = await self._proven_record(record_id)
        _readable(record_id, record)
        sealed_note = None
        if note is not None:
            sealed_note = _sealed_note(record.patient, note)
        answer = self._expect(await self.connection.request(
            FetchRequest(record_id, None, purpose, sealed_note, 0)), FetchResponse)
        # The anchor hashes to the record id; the ciphertext must hash to the anchor's, which
        # is the proven record's: content that the node made up (with a data key sealed to us
        # by itself) is never shown.
        short = record_id.hex()[:16]
        if answer.anchor.hash != record_id:
            raise self.connection.lied(f"the anchor it served is not record {short}")
        if (answer.anchor.ciphertext_hash, answer.anchor.patient) != (
                record.ciphertext_hash, record.patient):
            raise self.connection.lied(f"the anchor it served is not the one on chain for {short}")
        if crypto.digest(answer.ciphertext) != record.ciphertext_hash:
            raise self.connection.lied(f"the ciphertext it served is not the one anchored as "
                                       f"record {short}")
        try:  # the ciphertext is the anchored one: a key that does not open it is the node's
            data_key = sealing.unwrap_key(self.identity, answer.sealed_key)
            plaintext = sealing.decrypt_record(data_key, record.patient, answer.ciphertext)
        except sealing.SealingError as error:
            raise self.connection.lied(f"the key it served for record {short}: {error}") \
                from None
        return plaintext, {"record_id": record_id.hex(), "bytes": len(plaintext),
                           "access_tx": answer.access_tx_hash.hex(),
                           "access_height": answer.access_height,
                           "proven_height": self.proven_at[-1]}

    async def list_records(self, patient: bytes | None) -> list[dict[str, Any]]:
        whose = patient or self.me
        try:
            tag_key: bytes | None = await self._tag_key_for(whose)
        except WalletError:
            tag_key = None  # a read-only grantee does not get the tag key
        listed = []
        for item in await self._records(patient):
            state = item.state
            listed.append({
                "record_id": item.record_id.hex(),
                "patient": state.patient.hex(),
                "author": state.author.hex(),
                "categories": sealing.unblind(tag_key, state.tags) if tag_key else None,
                "ciphertext_bytes": state.ciphertext_bytes,
                "height": state.height,
                "time_ms": state.time_ms,
                "supersedes": state.supersedes.hex() if state.supersedes else None,
                "superseded_by": state.superseded_by.hex() if state.superseded_by else None,
                "erased_height": state.erased_height,
            })
        return listed

    async def record_history(self, record_id: bytes) -> list[dict[str, Any]]:
        """The versions of a record, oldest first: the chain of amendments that runs through it
        (`supersedes` back, `superseded_by` on), each version's state proven, and each link
        proven from both of its ends. A version this wallet may not read (a grant that names
        one version only) ends the chain there, and says so."""
        first = await self._proven_record(record_id)
        chain: list[tuple[bytes, RecordState | None]] = [(record_id, first)]
        seen = {record_id}

        async def step(version: bytes, state: RecordState, toward: bytes,
                       back: bool) -> tuple[bytes, RecordState | None]:
            if toward in seen or len(seen) >= HISTORY_VERSIONS_MAX:
                raise self.connection.lied("it proved a chain of amendments that loops or has "
                                           f"more than {HISTORY_VERSIONS_MAX} versions")
            seen.add(toward)
            try:
                other = await self._proven_record(toward)
            except Refused as refusal:
                if refusal.code != NOT_READABLE:
                    raise
                return toward, None
            link = other.superseded_by if back else other.supersedes
            if link != version or other.patient != state.patient:
                raise self.connection.lied(f"version {toward.hex()[:16]} does not link back to "
                                           f"{version.hex()[:16]}")
            return toward, other

        version, state = record_id, first
        while state.supersedes is not None:
            version, found = await step(version, state, state.supersedes, back=True)
            chain.insert(0, (version, found))
            if found is None:
                break
            state = found
        version, state = record_id, first
        while state.superseded_by is not None:
            version, found = await step(version, state, state.superseded_by, back=False)
            chain.append((version, found))
            if found is None:
                break
            state = found
        return [{"version": number, "record_id": version.hex(), "readable": found is not None,
                 "author": found.author.hex() if found else None,
                 "height": found.height if found else None,
                 "time_ms": found.time_ms if found else None,
                 "erased_height": found.erased_height if found else None,
                 "current": found is not None and found.superseded_by is None}
                for number, (version, found) in enumerate(chain, start=1)]

    async def erase_record(self, record_id: bytes) -> dict[str, Any]:
        erase = RecordErase(self.me, await self._next_nonce(), record_id).sign(
            self.identity, self.chain_id)
        final = await self._submit(erase)
        return {"record_id": record_id.hex(), "erased_height": final.height,
                "purges": "each hospital's node states on chain when the ciphertext has left "
                          "its disk: `healthnode record erasure` shows which have"}

    async def erasure(self, record_id: bytes) -> dict[str, Any]:
        """An erased record's purge: the authorities that have stated that its ciphertext left
        their files (`record.purged`), with the height of each statement, and the authorities of
        the proven head that have not yet. The statements are one state value, so when it is
        proven the list is whole (`proven`); when the node has none to prove, its absence is not
        proven (no absence is, for a wallet), and a node may be hiding them."""
        record = await self._proven_record(record_id)
        if record.erased_height is None:
            raise Refused("record_not_erased", f"record {record_id.hex()[:16]} is not erased")
        key = PURGE + record_id
        try:
            purges = self._decoded(key, (await self._prove([key]))[key], PurgeState)
        except Refused as refused:  # no statement yet: an absence is not proven to a wallet
            if refused.code != "not_found":
                raise
            purges = None
        done = {purge.authority: purge.height for purge in (purges.purges if purges else ())}
        names = {authority.public_key: authority.name
                 for authority in self.pin.genesis.authorities}

        def described(key: bytes) -> dict[str, Any]:
            return {"public_key": key.hex(), "name": names.get(key)}

        return {"record_id": record_id.hex(), "erased_height": record.erased_height,
                "erased_time_ms": record.erased_time_ms,
                "purged": [{**described(key), "height": height}
                           for key, height in sorted(done.items())],
                "not_yet": [described(key) for key in self.pin.trusted.authorities
                            if key not in done],
                "proven": purges is not None, "proven_height": self.proven_at[-1]}

    # --- grants -----------------------------------------------------------------------------

    async def grant(self, grantee: bytes, categories: list[str], record_ids: list[bytes],
                    write: bool, expires_in_ms: int | None,
                    purposes: Sequence[str] = DEFAULT_GRANT_PURPOSES) -> dict[str, Any]:
        """A grant for `purposes` (consent.grant_purposes, rules version 5 on); a read under it
        for another purpose is refused."""
        if not categories and not record_ids:
            raise HealthnodeError("a grant needs at least one --category or --record")
        granted = _checked_purposes(purposes)
        if grantee == self.me:
            raise HealthnodeError("--to is your own key: you need no grant to your own records")
        tag_key = sealing.tag_key(self.identity)
        scope_tags = tuple(sorted({sealing.blind(tag_key, name) for name in categories}))
        scope_records = tuple(sorted(set(record_ids)))
        # Re-wrap the data key of every record already in scope for the grantee.
        wraps = []
        in_scope = [item for item in await self._own_records()
                    if item.record_id in scope_records
                    or (scope_tags and set(item.anchor.tags) <= set(scope_tags))]
        for item in await self._on_chain(in_scope):
            mine = next((w.sealed_key for w in item.anchor.key_wraps if w.recipient == self.me),
                        None)
            if mine is None:
                continue
            data_key = sealing.unwrap_key(self.identity, mine)
            wraps.append(RecordKeyWrap(item.record_id, sealing.wrap_key(grantee, data_key)))
        if len(wraps) > limits.GRANT_RECORDS_MAX:
            raise HealthnodeError(f"{len(wraps)} records are in scope; one grant carries at most "
                                  f"{limits.GRANT_RECORDS_MAX}: split it by category or record")
        expires = now_ms() + expires_in_ms if expires_in_ms is not None else None
        actions = ("read", "write") if write else ("read",)
        # Only a writer gets the tag key: it must tag new records as the patient does. A reader
        # without it cannot tell which categories the patient's other records carry.
        tag_key_wrap = crypto.seal(grantee, tag_key) if write else None
        grant = ConsentGrantPurposes(
            self.me, await self._next_nonce(), grantee, actions, scope_records, scope_tags,
            expires, tuple(wraps), tag_key_wrap, granted).sign(self.identity, self.chain_id)
        final = await self._submit(grant)
        return {"grant_id": grant.hash.hex(), "height": final.height, "grantee": grantee.hex(),
                "actions": list(actions), "purposes": _purposes_shown(granted),
                "categories": sorted(set(categories)),
                "records": [r.hex() for r in scope_records], "expires_at_ms": expires,
                "records_rewrapped": len(wraps)}

    async def revoke(self, grant_id: bytes) -> dict[str, Any]:
        revoke = ConsentRevoke(self.me, await self._next_nonce(), grant_id).sign(
            self.identity, self.chain_id)
        final = await self._submit(revoke)
        return {"grant_id": grant_id.hex(), "revoked_height": final.height}

    async def revoke_provider(self, grantee: bytes) -> dict[str, Any]:
        """Revoke every grant of ours to `grantee` (consent.revoke_provider: one transaction per
        GRANTS_REVOKED_PER_TX_MAX of them), and show each revoked, proven: its state at the
        revoking height."""
        if grantee == self.me:
            raise HealthnodeError("--provider is your own key: you hold no grant to yourself")
        revoked: list[dict[str, Any]] = []
        heights: list[int] = []
        while True:
            listed = [item for item in await self._grants("grants", None)
                      if item.consent.signer == self.me and item.consent.grantee == grantee
                      and item.state.revoked_height is None
                      and (item.state.expires_at_ms is None
                           or item.state.expires_at_ms > now_ms())]
            if not listed and heights:
                break
            revoke = ConsentRevokeProvider(self.me, await self._next_nonce(), grantee).sign(
                self.identity, self.chain_id)
            final = await self._submit(revoke)
            assert final.height is not None, "_submit returns only final transactions"
            heights.append(final.height)
            keys = [GRANT + item.grant_id for item in listed]
            values = await self._prove(keys) if keys else {}
            for item, key in zip(listed, keys, strict=True):
                state = self._decoded(key, values[key], GrantState)
                if state is None or state.revoked_height is None:
                    continue  # expired before the block: the ledger had no need to end it
                if state.patient != self.me or state.grantee != grantee:
                    raise self.connection.lied(f"it listed grant {item.grant_id.hex()[:16]} "
                                               f"with other parties than the chain's")
                revoked.append({"grant_id": item.grant_id.hex(),
                                "revoked_height": state.revoked_height,
                                "purposes": _purposes_shown(state.purposes)})
            if len(listed) <= limits.GRANTS_REVOKED_PER_TX_MAX:
                break
        return {"provider": grantee.hex(), "heights": heights, "revoked": revoked}

    async def list_grants(self) -> list[dict[str, Any]]:
        tag_key = sealing.tag_key(self.identity)
        now = now_ms()
        listed = []
        for item in await self._grants("grants", None):
            state = item.state
            given = state.patient == self.me
            listed.append({
                "grant_id": item.grant_id.hex(),
                "direction": "given" if given else "received",
                "patient": state.patient.hex(),
                "grantee": state.grantee.hex(),
                "actions": list(state.actions),
                "purposes": _purposes_shown(state.purposes),
                "categories": sealing.unblind(tag_key, state.scope_tags) if given else None,
                "records": [r.hex() for r in state.scope_records],
                "expires_at_ms": state.expires_at_ms,
                "height": state.height,
                "revoked_height": state.revoked_height,
                "in_force": rules.grant_valid_at(state, now),
            })
        return listed

    # --- representatives (rules version 5) --------------------------------------------------

    async def appoint(self, representative: bytes, scopes: list[str],
                      ends_at_ms: int) -> dict[str, Any]:
        """Appoint `representative` to act for us within `scopes` until `ends_at_ms` (block
        time). One that may grant, set the policy or write gets our tag key; one that may read
        gets the data keys of our records now (later ones: as any reader, if wrapped for it)."""
        unknown = set(scopes) - REPRESENTATIVE_SCOPES
        if not scopes or unknown:
            named = ", ".join(sorted(REPRESENTATIVE_SCOPES))
            raise HealthnodeError(f"--scope: one or more of {named}")
        if representative == self.me:
            raise HealthnodeError("--to is your own key: you act for yourself already")
        tag_key = sealing.tag_key(self.identity)
        wraps = []
        if "read" in scopes:
            for item in await self._on_chain(await self._own_records()):
                mine = next((w.sealed_key for w in item.anchor.key_wraps
                             if w.recipient == self.me), None)
                if mine is not None and item.state.erased_height is None:
                    wraps.append(RecordKeyWrap(item.record_id, sealing.wrap_key(
                        representative, sealing.unwrap_key(self.identity, mine))))
        if len(wraps) > limits.GRANT_RECORDS_MAX:
            raise HealthnodeError(f"{len(wraps)} records; an appointment carries at most "
                                  f"{limits.GRANT_RECORDS_MAX} key wraps")
        tag_key_wrap = crypto.seal(representative, tag_key) if set(scopes) - {"read"} else None
        appoint = RepresentativeAppoint(
            self.me, await self._next_nonce(), representative, tuple(sorted(set(scopes))),
            ends_at_ms, tuple(sorted(wraps, key=lambda w: w.record_id)), tag_key_wrap).sign(
            self.identity, self.chain_id)
        final = await self._submit(appoint)
        return {"appointment": appoint.hash.hex(), "height": final.height,
                "representative": representative.hex(), "scopes": sorted(set(scopes)),
                "ends_at_ms": ends_at_ms, "records_wrapped": len(wraps)}

    async def end_appointment(self, patient: bytes, representative: bytes) -> dict[str, Any]:
        """End an appointment: ours of `representative`, or `patient`'s of us."""
        end = RepresentativeEnd(self.me, await self._next_nonce(), patient, representative).sign(
            self.identity, self.chain_id)
        final = await self._submit(end)
        return {"patient": patient.hex(), "representative": representative.hex(),
                "ended_height": final.height}

    async def _appointment(self, patient: bytes) -> AppointmentState:
        """`patient`'s appointment of us, proven on chain (the ledger judges it in force)."""
        key = APPOINTMENT + patient + self.me
        found = self._decoded(key, (await self._prove([key]))[key], AppointmentState)
        if found is None:
            raise WalletError("this patient has not appointed you (or the node hides it: try "
                              "another with --node)")
        return found

    async def _patient_tag_key(self, patient: bytes, scope: str) -> bytes:
        """The patient's tag key from its appointment of us, which must allow `scope` (the
        ledger decides again, by block time; this spares a transaction that cannot pass)."""
        appointment = await self._appointment(patient)
        if scope not in appointment.scopes:
            raise WalletError(f"not allowed (outside_appointment_scope): the patient's "
                              f"appointment of you (proven on chain) lets you "
                              f"{', '.join(appointment.scopes)}, not {scope}")
        if appointment.tag_key_wrap is None:
            raise WalletError("the appointment carries no tag key: it does not let you grant, "
                              "set the policy or write")
        try:
            return crypto.unseal(self.identity, appointment.tag_key_wrap)
        except nacl.exceptions.CryptoError:
            raise WalletError("the appointment's tag key does not open with this key") from None

    async def _act(self, patient: bytes, make: Any) -> tuple[RepresentativeAct, int | None]:
        """Submit `make(patient, nonce)` (the patient's transaction, unsigned) as our act."""
        nonce = await self._next_nonce()
        act = RepresentativeAct(self.me, nonce, make(nonce)).sign(self.identity, self.chain_id)
        final = await self._submit(act)
        return act, final.height

    async def grant_for(self, patient: bytes, grantee: bytes, categories: list[str],
                        write: bool, expires_in_ms: int | None,
                        purposes: Sequence[str] = DEFAULT_GRANT_PURPOSES) -> dict[str, Any]:
        """A grant by category of `patient`'s for `purposes` (consent.grant_purposes), as its
        representative (data keys of records before it are not re-wrapped: the grantee reads
        what is wrapped for it)."""
        if not categories:
            raise HealthnodeError("a representative grants by --category")
        granted = _checked_purposes(purposes)
        if grantee in (self.me, patient):
            raise HealthnodeError("--to: a provider, neither you nor the patient")
        tag_key = await self._patient_tag_key(patient, "grant")
        scope_tags = tuple(sorted({sealing.blind(tag_key, name) for name in categories}))
        expires = now_ms() + expires_in_ms if expires_in_ms is not None else None
        actions = ("read", "write") if write else ("read",)
        tag_key_wrap = crypto.seal(grantee, tag_key) if write else None
        act, height = await self._act(patient, lambda nonce: ConsentGrantPurposes(
            patient, nonce, grantee, actions, (), scope_tags, expires, (), tag_key_wrap,
            granted, ACT_UNSIGNED))
        return {"grant_id": act.hash.hex(), "height": height, "patient": patient.hex(),
                "grantee": grantee.hex(), "actions": list(actions),
                "purposes": _purposes_shown(granted),
                "categories": sorted(set(categories)), "expires_at_ms": expires,
                "representative": self.me.hex()}

    async def revoke_for(self, patient: bytes, grant_id: bytes) -> dict[str, Any]:
        act, height = await self._act(patient, lambda nonce: ConsentRevoke(
            patient, nonce, grant_id, ACT_UNSIGNED))
        return {"grant_id": grant_id.hex(), "revoked_height": height, "patient": patient.hex(),
                "representative": self.me.hex(), "act": act.hash.hex()}

    async def revoke_provider_for(self, patient: bytes, grantee: bytes) -> dict[str, Any]:
        """Revoke every grant of `patient`'s to `grantee` (consent.revoke_provider), as its
        representative. Unlike the patient's `revoke --provider` it lists no revoked grant: a
        representative may not list the patient's grants (the patient's audit names the act)."""
        if grantee in (self.me, patient):
            raise HealthnodeError("--provider: a provider, neither you nor the patient")
        act, height = await self._act(patient, lambda nonce: ConsentRevokeProvider(
            patient, nonce, grantee, ACT_UNSIGNED))
        return {"provider": grantee.hex(), "revoked_height": height, "patient": patient.hex(),
                "representative": self.me.hex(), "act": act.hash.hex()}

    async def _acts(self) -> list[dict[str, Any]]:
        """Our representatives' acts for us, as audit lines: their count and each line proven."""
        count_key = ACT_COUNT + self.me
        raw = (await self._prove([count_key]))[count_key]
        try:
            count = act_count_decode(raw)
        except ValueError as error:
            raise self.connection.lied(f"a proven act count does not decode: {error}") from None
        keys = [ACT_LINE + self.me + index.to_bytes(8, "big") for index in range(count)]
        values = await self._prove(keys) if keys else {}
        lines = []
        for key in keys:
            value = values[key]
            if value is None:
                raise self.connection.lied("it proved fewer act lines than their count")
            try:
                line = ActLine.decode(value)
            except ValueError as error:
                raise self.connection.lied(f"a proven act line does not decode: {error}") \
                    from None
            lines.append({"kind": "act", "height": line.height, "time_ms": line.time_ms,
                          "representative": line.representative.hex(),
                          "act": ACT_NAMES.get(line.kind, f"kind {line.kind}"),
                          "tx": line.tx_hash.hex()})
        return lines

    # --- break-glass ------------------------------------------------------------------------

    async def emergency_set(self, allow: list[str], deny: list[str],
                            deny_all: bool = False) -> dict[str, Any]:
        """Change the patient's emergency policy: allow and deny categories (blinded), and wrap
        the data key of every record the new policy covers for the emergency key."""
        for name in (*allow, *deny):
            sealing.check_category(name)
        policy = await self._proven_policy(self.me)
        if policy.key is None:
            raise WalletError("this network has no break-glass key (its genesis has none)")
        public_key = policy.key.key.public_key
        tag_key = sealing.tag_key(self.identity)
        allowed = set() if deny_all else set(policy.allowed_tags)
        allowed |= {sealing.blind(tag_key, name) for name in allow}
        allowed -= {sealing.blind(tag_key, name) for name in deny}
        wraps = []
        nonce = await self._next_nonce()
        if allowed:
            covered = [item for item in await self._own_records()
                       if set(item.anchor.tags) <= allowed]
            for item in await self._on_chain(covered):
                mine = next((w.sealed_key for w in item.anchor.key_wraps
                             if w.recipient == self.me), None)
                if mine is not None:
                    data_key = sealing.unwrap_key(self.identity, mine)
                    wraps.append(EmergencyWrap(item.record_id, threshold.wrap(
                        public_key, data_key, threshold.WrapLabel(
                            self.chain_id, self.me, item.anchor.ciphertext_hash))))
        # One policy transaction holds at most EMERGENCY_WRAPS_PER_TX_MAX wraps: more records
        # are wrapped by further transactions of the same policy, each final before the next.
        per_tx = limits.EMERGENCY_WRAPS_PER_TX_MAX
        chunks = [wraps[at:at + per_tx] for at in range(0, len(wraps), per_tx)] or [[]]
        for offset, chunk in enumerate(chunks):
            change = EmergencyPolicy(self.me, nonce + offset, tuple(sorted(allowed)),
                                     tuple(chunk)).sign(self.identity, self.chain_id)
            final = await self._submit(change)
        return {"height": final.height, "allowed": sealing.unblind(tag_key, tuple(sorted(
            allowed)), tuple(allow)), "records_wrapped": len(wraps),
            "transactions": len(chunks)}

    async def emergency_list(self) -> dict[str, Any]:
        policy = await self._proven_policy(self.me)
        tag_key = sealing.tag_key(self.identity)
        return {"available": policy.key is not None,
                "allowed": sealing.unblind(tag_key, policy.allowed_tags)}

    async def _emergency_target(self, record_id: bytes
                                ) -> tuple[EmergencyInfoResponse, RecordState, EmergencyKey]:
        """The node's emergency info for the record, checked against proofs: the record (on
        chain, the newest) and the emergency key, its threshold and the share commitments,
        never the node's word, so that a node cannot substitute a key or a commitment of its
        own. The anchor must be the record's: it names the ciphertext's hash, which ties the
        ciphertext and the wrap to the record asked for."""
        info = self._expect(await self.connection.request(EmergencyInfoRequest(record_id)),
                            EmergencyInfoResponse)
        values = await self._prove([RECORD + record_id, EMERGENCY_KEY])
        record = self._decoded(RECORD + record_id, values[RECORD + record_id], RecordState)
        key_state = self._decoded(EMERGENCY_KEY, values[EMERGENCY_KEY], EmergencyKeyState)
        if record is None:
            raise self.connection.lied("it proved a record's absence, which it may not")
        _readable(record_id, record)
        if key_state is None:
            raise WalletError("this network has no break-glass key (its genesis has none)")
        emergency = key_state.key
        anchor = info.anchor
        if anchor.hash != record_id or anchor.ciphertext_hash != record.ciphertext_hash:
            raise self.connection.lied(f"the anchor it served is not record "
                                       f"{record_id.hex()[:16]}")
        if info.public_key != emergency.public_key or info.threshold != emergency.threshold:
            raise self.connection.lied("the emergency key or threshold it named is not the "
                                       "chain's")
        commitments = {c.index: c for c in emergency.commitments}
        for holder in info.holders:
            proven = commitments.get(holder.index)
            if proven is None or (proven.authority, proven.commitment) != (
                    holder.authority, holder.commitment):
                raise self.connection.lied(f"share holder {holder.index}'s key or commitment "
                                           f"is not the chain's")
        return info, record, emergency

    async def _reach_holders(self, holders: Sequence[EmergencyHolder]
                             ) -> tuple[list[tuple[EmergencyHolder, NodeConnection]], list[str]]:
        """A connection to each share holder that answers at its address as itself; the
        others, by key."""
        reachable: list[tuple[EmergencyHolder, NodeConnection]] = []
        unreachable = []
        for holder in sorted(holders, key=lambda h: h.index):
            if holder.authority == self.connection.node_public_key:
                reachable.append((holder, self.connection))
                continue
            try:
                if not holder.address:
                    raise WalletError("no address known")
                other = await self.connection.dial_other(holder.address)
                if other.node_public_key != holder.authority:  # the address named another node
                    raise WalletError("another node answers at its address")
                reachable.append((holder, other))
            except WalletError:
                unreachable.append(holder.authority.hex()[:16])
        return reachable, unreachable

    @staticmethod
    def _open_shares(groups: dict[bytes, dict[int, bytes]], emergency: EmergencyKey,
                     label: threshold.WrapLabel) -> tuple[bytes | None, list[int]]:
        """The data key from the largest group of shares of one wrap that opens it, and whose
        shares those were; (None, []) if none does."""
        for wrapped, shares in sorted(groups.items(), key=lambda item: -len(item[1])):
            if len(shares) < emergency.threshold:
                break
            try:
                return threshold.open_wrap(emergency.public_key, wrapped, label,
                                           threshold.combine(shares, emergency.threshold)), \
                    sorted(shares)
            except threshold.ThresholdError:
                continue
        return None, []

    async def break_glass(self, record_id: bytes, purpose: str, note: str | None
                          ) -> tuple[bytes, dict[str, Any]]:
        """Read a record without a grant: collect decryption shares from `threshold`
        authorities (each finalizes a break-glass access.log first), verify each against its
        commitment, combine them here, and decrypt. No node sees the data key."""
        info, record, emergency = await self._emergency_target(record_id)
        patient = record.patient
        reachable, unreachable = await self._reach_holders(info.holders)
        if len(reachable) < emergency.threshold:
            raise WalletError(
                f"only {len(reachable)} of {len(info.holders)} share holders are reachable and "
                f"{emergency.threshold} are needed; nothing was requested, nothing released")
        sealed_note = _sealed_note(patient, note) if note else None
        label = threshold.WrapLabel(self.chain_id, patient, record.ciphertext_hash)
        # Shares by the wrap they were made of: honest holders all use the record's one wrap,
        # and a holder that answers with a wrap of its own making gathers no company.
        groups: dict[bytes, dict[int, bytes]] = {}
        ciphertext: bytes | None = None
        invalid, refused, access = [], [], []

        def enough() -> bool:
            return ciphertext is not None and any(
                len(shares) >= emergency.threshold for shares in groups.values())

        for holder, connection in reachable:
            if enough():
                break
            try:
                answer = await connection.request(ShareRequest(
                    record_id, purpose, sealed_note, int(ciphertext is None)))
            except WalletError as error:
                refused.append({"holder": holder.authority.hex(), "error": str(error)})
                continue
            if not isinstance(answer, ShareResponse):
                refused.append({"holder": holder.authority.hex(),
                                "error": f"answered with {type(answer).__name__}"})
                continue
            access.append({"holder": holder.authority.hex(), "access_tx":
                           answer.access_tx_hash.hex(), "height": answer.access_height})
            if ciphertext is None and answer.ciphertext is not None:
                if crypto.digest(answer.ciphertext) == record.ciphertext_hash:
                    ciphertext = answer.ciphertext
                else:  # forged content: its share is not trusted either
                    invalid.append(holder.authority.hex())
                    continue
            try:
                ephemeral = threshold.check_wrap(emergency.public_key, answer.wrap, label)
            except threshold.ThresholdError:
                invalid.append(holder.authority.hex())
                continue
            if answer.index != holder.index or not threshold.verify_share(
                    holder.commitment, ephemeral, answer.partial, answer.proof):
                invalid.append(holder.authority.hex())
                continue
            groups.setdefault(answer.wrap, {})[holder.index] = answer.partial
        data_key, shares_from = self._open_shares(groups, emergency, label)
        if refused and not groups:
            raise WalletError(f"break-glass refused: {refused[0]['error']}")
        if data_key is None:
            valid = max((len(shares) for shares in groups.values()), default=0)
            raise WalletError(f"only {valid} valid decryption shares of one wrap, "
                              f"{emergency.threshold} needed (invalid from: {invalid or 'none'}; "
                              f"refused: {[r['error'] for r in refused] or 'none'})")
        if ciphertext is None:
            raise WalletError("no share holder returned the record's ciphertext")
        plaintext = sealing.decrypt_record(data_key, patient, ciphertext)
        return plaintext, {"record_id": record_id.hex(), "bytes": len(plaintext),
                           "patient": patient.hex(), "break_glass": True,
                           "shares_from": shares_from, "invalid_shares": invalid,
                           "refused": refused, "unreachable": unreachable, "access": access}

    # --- audit ------------------------------------------------------------------------------

    async def audit(self) -> list[dict[str, Any]]:
        items: list[AuditItem] = await self._pages("audit", None)
        lines = [self._audit_line(item) for item in items]
        return sorted([*lines, *await self._erasures(), *await self._acts()],
                      key=lambda line: line["height"])

    def _audit_line(self, item: AuditItem) -> dict[str, Any]:
        entry, access = item.entry, item.access
        if access.hash != entry.tx_hash:
            raise self.connection.lied(f"it listed an access.log that is not "
                                       f"{entry.tx_hash.hex()[:16]}")
        note = None
        if access.sealed_note is not None:
            try:
                note = crypto.unseal(self.identity, access.sealed_note).decode(
                    "utf-8", "replace")
            except nacl.exceptions.CryptoError:
                note = "(a note that does not open with your key)"
        return {
            "height": entry.height, "time_ms": entry.time_ms,
            "record_id": entry.record_id.hex(), "reader": entry.reader.hex(),
            "hospital": entry.authority.hex(), "purpose": entry.purpose,
            "grant_id": entry.grant_id.hex() if entry.grant_id else None,
            "break_glass": bool(entry.break_glass), "note": note,
            "reader_name": item.reader_name, "hospital_name": item.hospital_name,
            "access_tx": entry.tx_hash.hex(), "kind": "access",
        }

    async def audit_after(self, after: bytes | None) -> tuple[list[dict[str, Any]], bytes | None]:
        """The accesses finalized after the cursor `after` (None: all), as `audit` lines, and
        the cursor past them (`after` when there is none): what `audit --follow` asks each
        second. A block's audit entries are final together, so the cursor is the end of the
        newest height seen."""
        lines, newest = [], None
        while True:
            page = self._expect(await self.connection.request(
                QueryRequest("audit", None, after)), AuditResponse)
            for item in page.items:
                lines.append(self._audit_line(item))
                newest = max(newest or 0, item.entry.height)
            if page.cursor is None:
                break
            if after is not None and page.cursor <= after:
                raise self.connection.lied("its list's cursor went back")
            after = page.cursor
        if newest is not None:
            after = height_bytes(newest) + AUDIT_INDEX_END
        return sorted(lines, key=lambda line: line["height"]), after

    async def _erasures(self) -> list[dict[str, Any]]:
        """The patient's erased records, as audit lines, each erasure proven."""
        listed = [item.record_id for item in await self._own_records()
                  if item.state.erased_height is not None]
        if not listed:
            return []
        keys = [RECORD + record_id for record_id in listed]
        values = await self._prove(keys)
        lines = []
        for record_id, key in zip(listed, keys, strict=True):
            record = self._decoded(key, values[key], RecordState)
            if record is None or record.erased_height is None or record.patient != self.me:
                raise self.connection.lied(f"it listed record {record_id.hex()[:16]} as "
                                           f"erased; it is not")
            lines.append({"kind": "erasure", "height": record.erased_height,
                          "time_ms": record.erased_time_ms, "record_id": record_id.hex()})
        return lines


def _checked_purposes(purposes: Sequence[str]) -> tuple[str, ...]:
    """The purposes a grant names, sorted and once each; one or more of PURPOSES."""
    unknown = sorted(set(purposes) - PURPOSES)
    if unknown or not purposes:
        raise HealthnodeError(f"--purpose {', '.join(unknown)}: a grant names one or more of "
                              f"{', '.join(sorted(PURPOSES))}")
    return tuple(sorted(set(purposes)))


def _purposes_shown(purposes: Sequence[str]) -> list[dict[str, str]]:
    """A grant's purposes with their FHIR purpose-of-use codes; a grant that names none (made
    before rules version 5) allows every purpose, and is shown so."""
    if not purposes:
        return [{"purpose": "any", "code": "*"}]
    return [{"purpose": purpose, "code": PURPOSE_CODES[purpose]} for purpose in purposes]
