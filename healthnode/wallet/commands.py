"""The wallet's operations: add, read, list and erase records; grant, revoke, list grants; audit.

Each takes the wallet's identity and an open NodeConnection and returns a JSON-ready dict (the CLI
prints it). Everything secret happens here, on the user's machine: the record is encrypted and
its key wrapped before upload; a read's key wrap is opened here; sealed notes are opened here.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Final

import nacl.exceptions

from healthnode import crypto, limits, threshold
from healthnode.errors import HealthnodeError
from healthnode.ledger import rules
from healthnode.protocol.client import (
    SUBMIT_WAIT_MS_MAX,
    AuditItem,
    AuditResponse,
    EmergencyHolder,
    EmergencyInfoRequest,
    EmergencyInfoResponse,
    EmergencyPolicyResponse,
    FetchRequest,
    FetchResponse,
    GrantItem,
    GrantsResponse,
    NonceResponse,
    QueryRequest,
    RecordItem,
    RecordsResponse,
    ShareRequest,
    ShareResponse,
    SubmitRequest,
    SubmitResponse,
    UploadRequest,
    UploadResponse,
)
from healthnode.protocol.tx import (
    AnyTx,
    ConsentGrant,
    ConsentRevoke,
    EmergencyPolicy,
    EmergencyWrap,
    KeyWrap,
    RecordAnchor,
    RecordErase,
    RecordKeyWrap,
)
from healthnode.wallet import sealing
from healthnode.wallet.connection import NodeConnection, WalletError
from healthnode.wallet.fhir import fhir_resource_type, validate_fhir

# The wallet adds nothing to a plaintext but the AEAD nonce and tag.
RECORD_PLAINTEXT_BYTES_MAX: Final = limits.BLOB_BYTES_MAX - sealing.NONCE_BYTES - 16
DURATION: Final = re.compile(r"(\d{1,6})([smhdw])")
DURATION_MS: Final = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration_ms(text: str) -> int:
    """`45s`, `90m`, `12h`, `30d`, `8w` in milliseconds."""
    match = DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise HealthnodeError(f"--expires {text!r}: use a number and a unit, e.g. 30d, 12h, 90m")
    return int(match.group(1)) * DURATION_MS[match.group(2)]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Wallet:
    identity: crypto.Identity
    connection: NodeConnection
    chain_id: str = ""  # learnt from the node with the next nonce, before anything is signed

    @property
    def me(self) -> bytes:
        return self.identity.public_key

    # --- plumbing ---------------------------------------------------------------------------

    async def _next_nonce(self) -> int:
        answer = await self.connection.request(QueryRequest("nonce", None, None))
        assert isinstance(answer, NonceResponse)
        self.chain_id = answer.chain_id
        return answer.next_nonce

    async def _submit(self, tx: AnyTx) -> SubmitResponse:
        answer = await self.connection.request(SubmitRequest(tx, SUBMIT_WAIT_MS_MAX))
        assert isinstance(answer, SubmitResponse)
        if answer.height is None:
            raise WalletError(f"transaction {tx.hash.hex()} was accepted but not final within "
                              f"{SUBMIT_WAIT_MS_MAX // 1000} s; check later")
        return answer

    async def _pages(self, what: str, patient: bytes | None) -> list[Any]:
        """Every item of a list query, page after page (the node pages by 256)."""
        items: list[Any] = []
        after = None
        while True:
            answer = await self.connection.request(QueryRequest(what, patient, after))
            assert isinstance(answer, RecordsResponse | GrantsResponse | AuditResponse)
            items.extend(answer.items)
            if answer.cursor is None:
                return items
            after = answer.cursor

    async def _records(self, patient: bytes | None) -> list[RecordItem]:
        return await self._pages("records", patient)

    async def _grants(self, what: str, patient: bytes | None) -> list[GrantItem]:
        return await self._pages(what, patient)

    async def _tag_key_for(self, patient: bytes) -> bytes:
        """The patient's tag key: ours if we are the patient, else from its write grant."""
        if patient == self.me:
            return sealing.tag_key(self.identity)
        now = _now_ms()
        for item in await self._grants("grants", None):
            state, grant = item.state, item.grant
            if (state.patient == patient and state.grantee == self.me
                    and "write" in state.actions and rules.grant_valid_at(state, now)
                    and grant.tag_key_wrap is not None):
                try:
                    return crypto.unseal(self.identity, grant.tag_key_wrap)
                except nacl.exceptions.CryptoError:
                    raise WalletError("the write grant's tag key does not open with this key") \
                        from None
        raise WalletError("no write grant from this patient in force: the patient must grant "
                          "you write access (healthnode grant --write) before you add records")

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
        # The patient, and every reader the patient has granted this category to.
        readers = [patient]
        for item in await self._grants("patient_grants", patient):
            state = item.state
            if "read" in state.actions and set(tags) <= set(state.scope_tags) \
                    and state.grantee not in readers:
                readers.append(state.grantee)
        data_key = sealing.new_data_key()
        ciphertext = sealing.encrypt_record(data_key, patient, plaintext)
        # The patient's emergency policy covers these categories: wrap for the emergency key.
        policy = await self._emergency_policy(patient)
        uploaded = await self.connection.request(UploadRequest(ciphertext))
        assert isinstance(uploaded, UploadResponse)
        ciphertext_hash = crypto.digest(ciphertext)
        if uploaded.ciphertext_hash != ciphertext_hash:
            raise WalletError("the node answered the upload with another ciphertext hash than "
                              "that of the bytes sent; nothing was anchored")
        nonce = await self._next_nonce()  # also learns the chain id, which the wrap is bound to
        emergency_wrap = None
        if policy.public_key is not None and set(tags) <= set(policy.allowed_tags) and \
                policy.allowed_tags:
            emergency_wrap = threshold.wrap(policy.public_key, data_key, threshold.WrapLabel(
                self.chain_id, patient, ciphertext_hash))
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
        sealed_note = None
        if note is not None:
            sealed_note = await self._seal_note_for_patient(record_id, note)
        answer = await self.connection.request(
            FetchRequest(record_id, None, purpose, sealed_note, 0))
        assert isinstance(answer, FetchResponse)
        # The anchor hashes to the record id; the ciphertext must hash to the anchor's: content
        # that the node made up (with a data key sealed to us by itself) is never shown.
        node = self.connection.node_public_key.hex()[:16]
        if answer.anchor.hash != record_id:
            raise WalletError(f"node {node} lied: the anchor it served is not record "
                              f"{record_id.hex()[:16]}")
        if crypto.digest(answer.ciphertext) != answer.anchor.ciphertext_hash:
            raise WalletError(f"node {node} lied: the ciphertext it served is not the one "
                              f"anchored as record {record_id.hex()[:16]}")
        data_key = sealing.unwrap_key(self.identity, answer.sealed_key)
        plaintext = sealing.decrypt_record(data_key, answer.anchor.patient, answer.ciphertext)
        return plaintext, {"record_id": record_id.hex(), "bytes": len(plaintext),
                           "access_tx": answer.access_tx_hash.hex(),
                           "access_height": answer.access_height}

    async def _patient_of(self, record_id: bytes) -> bytes:
        """Whose record this is: ours, or one of the patients that granted us access."""
        if any(item.record_id == record_id for item in await self._records(None)):
            return self.me
        patients = {g.state.patient for g in await self._grants("grants", None)
                    if g.state.grantee == self.me}
        for patient in sorted(patients):
            if any(item.record_id == record_id for item in await self._records(patient)):
                return patient
        raise WalletError("no grant of yours lists this record, so there is nobody to seal "
                          "the note to; read it without --note")

    async def _seal_note_for_patient(self, record_id: bytes, note: str) -> bytes:
        if len(note.encode()) > limits.SEALED_NOTE_BYTES_MAX:
            raise HealthnodeError(f"--note is longer than {limits.SEALED_NOTE_BYTES_MAX} bytes")
        return crypto.seal(await self._patient_of(record_id), note.encode())

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

    async def erase_record(self, record_id: bytes) -> dict[str, Any]:
        erase = RecordErase(self.me, await self._next_nonce(), record_id).sign(
            self.identity, self.chain_id)
        final = await self._submit(erase)
        return {"record_id": record_id.hex(), "erased_height": final.height}

    # --- grants -----------------------------------------------------------------------------

    async def grant(self, grantee: bytes, categories: list[str], record_ids: list[bytes],
                    write: bool, expires_in_ms: int | None) -> dict[str, Any]:
        if not categories and not record_ids:
            raise HealthnodeError("a grant needs at least one --category or --record")
        if grantee == self.me:
            raise HealthnodeError("--to is your own key: you need no grant to your own records")
        tag_key = sealing.tag_key(self.identity)
        scope_tags = tuple(sorted({sealing.blind(tag_key, name) for name in categories}))
        scope_records = tuple(sorted(set(record_ids)))
        # Re-wrap the data key of every record already in scope for the grantee.
        wraps = []
        for item in await self._records(None):
            state = item.state
            in_scope = item.record_id in scope_records or (
                scope_tags and set(state.tags) <= set(scope_tags))
            if not in_scope or state.erased_height is not None:
                continue
            mine = next((w.sealed_key for w in item.anchor.key_wraps if w.recipient == self.me),
                        None)
            if mine is None:
                continue
            data_key = sealing.unwrap_key(self.identity, mine)
            wraps.append(RecordKeyWrap(item.record_id, sealing.wrap_key(grantee, data_key)))
        if len(wraps) > limits.GRANT_RECORDS_MAX:
            raise HealthnodeError(f"{len(wraps)} records are in scope; one grant carries at most "
                                  f"{limits.GRANT_RECORDS_MAX}: split it by category or record")
        expires = _now_ms() + expires_in_ms if expires_in_ms is not None else None
        actions = ("read", "write") if write else ("read",)
        # Only a writer gets the tag key: it must tag new records as the patient does. A reader
        # without it cannot tell which categories the patient's other records carry.
        tag_key_wrap = crypto.seal(grantee, tag_key) if write else None
        grant = ConsentGrant(self.me, await self._next_nonce(), grantee, actions, scope_records,
                             scope_tags, expires, tuple(wraps), tag_key_wrap).sign(
            self.identity, self.chain_id)
        final = await self._submit(grant)
        return {"grant_id": grant.hash.hex(), "height": final.height, "grantee": grantee.hex(),
                "actions": list(actions), "categories": sorted(set(categories)),
                "records": [r.hex() for r in scope_records], "expires_at_ms": expires,
                "records_rewrapped": len(wraps)}

    async def revoke(self, grant_id: bytes) -> dict[str, Any]:
        revoke = ConsentRevoke(self.me, await self._next_nonce(), grant_id).sign(
            self.identity, self.chain_id)
        final = await self._submit(revoke)
        return {"grant_id": grant_id.hex(), "revoked_height": final.height}

    async def list_grants(self) -> list[dict[str, Any]]:
        tag_key = sealing.tag_key(self.identity)
        now = _now_ms()
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
                "categories": sealing.unblind(tag_key, state.scope_tags) if given else None,
                "records": [r.hex() for r in state.scope_records],
                "expires_at_ms": state.expires_at_ms,
                "height": state.height,
                "revoked_height": state.revoked_height,
                "in_force": rules.grant_valid_at(state, now),
            })
        return listed

    # --- break-glass ------------------------------------------------------------------------

    async def _emergency_policy(self, patient: bytes) -> EmergencyPolicyResponse:
        answer = await self.connection.request(QueryRequest("emergency_policy", patient, None))
        assert isinstance(answer, EmergencyPolicyResponse)
        return answer

    async def emergency_set(self, allow: list[str], deny: list[str],
                            deny_all: bool = False) -> dict[str, Any]:
        """Change the patient's emergency policy: allow and deny categories (blinded), and wrap
        the data key of every record the new policy covers for the emergency key."""
        for name in (*allow, *deny):
            sealing.check_category(name)
        policy = await self._emergency_policy(self.me)
        if policy.public_key is None:
            raise WalletError("this network has no break-glass key (its genesis has none)")
        tag_key = sealing.tag_key(self.identity)
        allowed = set() if deny_all else set(policy.allowed_tags)
        allowed |= {sealing.blind(tag_key, name) for name in allow}
        allowed -= {sealing.blind(tag_key, name) for name in deny}
        wraps = []
        nonce = await self._next_nonce()  # also learns the chain id, which wraps are bound to
        if allowed:
            for item in await self._records(None):
                state = item.state
                if state.erased_height is not None or not set(state.tags) <= allowed:
                    continue
                mine = next((w.sealed_key for w in item.anchor.key_wraps
                             if w.recipient == self.me), None)
                if mine is not None:
                    data_key = sealing.unwrap_key(self.identity, mine)
                    wraps.append(EmergencyWrap(item.record_id, threshold.wrap(
                        policy.public_key, data_key, threshold.WrapLabel(
                            self.chain_id, self.me, state.ciphertext_hash))))
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
        policy = await self._emergency_policy(self.me)
        tag_key = sealing.tag_key(self.identity)
        return {"available": policy.public_key is not None,
                "allowed": sealing.unblind(tag_key, policy.allowed_tags)}

    async def break_glass(self, record_id: bytes, purpose: str, note: str | None
                          ) -> tuple[bytes, dict[str, Any]]:
        """Read a record without a grant: collect decryption shares from `threshold`
        authorities (each finalizes a break-glass access.log first), verify each against its
        commitment, combine them here, and decrypt. No node sees the data key."""
        info = await self.connection.request(EmergencyInfoRequest(record_id))
        assert isinstance(info, EmergencyInfoResponse)
        # The record id is the anchor's hash: an anchor that hashes to it is the record's own,
        # whoever served it, and names the patient and the ciphertext's hash. So the ciphertext
        # and the wrap below are tied to the record asked for, not to the node's word.
        anchor = info.anchor
        node = self.connection.node_public_key.hex()[:16]
        if anchor.hash != record_id:
            raise WalletError(f"node {node} lied: the anchor it served is not record "
                              f"{record_id.hex()[:16]}")
        patient = anchor.patient
        reachable: list[tuple[EmergencyHolder, NodeConnection]] = []
        unreachable = []
        for holder in sorted(info.holders, key=lambda h: h.index):
            if holder.authority == self.connection.node_public_key:
                reachable.append((holder, self.connection))
                continue
            try:
                if not holder.address:
                    raise WalletError("no address known")
                reachable.append((holder, await self.connection.dial_other(holder.address)))
            except WalletError:
                unreachable.append(holder.authority.hex()[:16])
        if len(reachable) < info.threshold:
            raise WalletError(
                f"only {len(reachable)} of {len(info.holders)} share holders are reachable and "
                f"{info.threshold} are needed; nothing was requested, nothing released")
        if note is not None and len(note.encode()) > limits.SEALED_NOTE_BYTES_MAX:
            raise HealthnodeError(f"--note is longer than {limits.SEALED_NOTE_BYTES_MAX} bytes")
        sealed_note = crypto.seal(patient, note.encode()) if note else None
        await self._next_nonce()  # learns the chain id, which the wrap is bound to
        label = threshold.WrapLabel(self.chain_id, patient, anchor.ciphertext_hash)
        # Shares by the wrap they were made of: honest holders all use the record's one wrap,
        # and a holder that answers with a wrap of its own making gathers no company.
        groups: dict[bytes, dict[int, bytes]] = {}
        ciphertext: bytes | None = None
        invalid, refused, access = [], [], []

        def enough() -> bool:
            return ciphertext is not None and any(
                len(shares) >= info.threshold for shares in groups.values())

        for holder, connection in reachable:
            if enough():
                break
            try:
                answer = await connection.request(ShareRequest(
                    record_id, purpose, sealed_note, int(ciphertext is None)))
            except WalletError as error:
                refused.append({"holder": holder.authority.hex(), "error": str(error)})
                continue
            assert isinstance(answer, ShareResponse)
            access.append({"holder": holder.authority.hex(), "access_tx":
                           answer.access_tx_hash.hex(), "height": answer.access_height})
            if ciphertext is None and answer.ciphertext is not None:
                if crypto.digest(answer.ciphertext) == anchor.ciphertext_hash:
                    ciphertext = answer.ciphertext
                else:  # forged content: its share is not trusted either
                    invalid.append(holder.authority.hex())
                    continue
            try:
                ephemeral = threshold.check_wrap(info.public_key, answer.wrap, label)
            except threshold.ThresholdError:
                invalid.append(holder.authority.hex())
                continue
            if answer.index != holder.index or not threshold.verify_share(
                    holder.commitment, ephemeral, answer.partial, answer.proof):
                invalid.append(holder.authority.hex())
                continue
            groups.setdefault(answer.wrap, {})[holder.index] = answer.partial
        shares_from: list[int] = []
        data_key = None
        for wrapped, shares in sorted(groups.items(), key=lambda item: -len(item[1])):
            if len(shares) < info.threshold:
                break
            try:
                data_key = threshold.open_wrap(info.public_key, wrapped, label,
                                               threshold.combine(shares, info.threshold))
            except threshold.ThresholdError:
                continue
            shares_from = sorted(shares)
            break
        if refused and not groups:
            raise WalletError(f"break-glass refused: {refused[0]['error']}")
        if data_key is None:
            valid = max((len(shares) for shares in groups.values()), default=0)
            raise WalletError(f"only {valid} valid decryption shares of one wrap, "
                              f"{info.threshold} needed (invalid from: {invalid or 'none'}; "
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
        lines = []
        items: list[AuditItem] = await self._pages("audit", None)
        for item in items:
            entry, access = item.entry, item.access
            note = None
            if access.sealed_note is not None:
                try:
                    note = crypto.unseal(self.identity, access.sealed_note).decode(
                        "utf-8", "replace")
                except nacl.exceptions.CryptoError:
                    note = "(a note that does not open with your key)"
            lines.append({
                "height": entry.height, "time_ms": entry.time_ms,
                "record_id": entry.record_id.hex(), "reader": entry.reader.hex(),
                "hospital": entry.authority.hex(), "purpose": entry.purpose,
                "grant_id": entry.grant_id.hex() if entry.grant_id else None,
                "break_glass": bool(entry.break_glass), "note": note,
                "reader_name": item.reader_name, "hospital_name": item.hospital_name,
                "access_tx": entry.tx_hash.hex(),
            })
        return lines
