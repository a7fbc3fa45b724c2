"""What a wallet believes, checked: the plumbing under every wallet operation that asks a node
something and acts on the answer only once it is proven (docs/wallet.md, "A wallet that believes
no single node").

`CheckedNode` holds the wallet's identity, its connection to one node and its pin (the network's
genesis and the light client's trusted head, wallet/trust.py). Its methods prove state keys
against a certified, recent head that is not behind what the wallet knows, take a submission as
final only with its Merkle path in a certified block, sign with the proven nonce, and turn every
answer that does not hold up into `Lied`, naming the node. `wallet/commands.py` builds the
operations on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import trio

from healthnode import crypto
from healthnode.clock import now_ms
from healthnode.ledger import proofs
from healthnode.ledger.reading import NOT_READABLE
from healthnode.ledger.state import (
    EMERGENCY_KEY,
    EMERGENCY_POLICY,
    GRANT,
    NONCE,
    RECORD,
    CorruptState,
    decode_value,
)
from healthnode.protocol.block import VerificationError
from healthnode.protocol.client import (
    PROOF_KEYS_MAX,
    SUBMIT_WAIT_MS_MAX,
    AuditResponse,
    GenesisResponse,
    GrantItem,
    GrantsResponse,
    NonceResponse,
    QueryRequest,
    RecordItem,
    RecordsResponse,
    StateProofRequest,
    StateProofResponse,
    SubmitRequest,
    SubmitResponse,
)
from healthnode.protocol.schema import Message
from healthnode.protocol.state import (
    EmergencyKeyState,
    EmergencyPolicyState,
    GrantState,
    RecordState,
    SignerNonce,
)
from healthnode.protocol.tx import AnyTx, grant_purposes
from healthnode.wallet import trust
from healthnode.wallet.connection import NodeConnection, Refused, WalletError
from healthnode.wallet.trust import FRESH_MS_DEFAULT, Pin

M = TypeVar("M", bound=Message)
T = TypeVar("T")
# A list a wallet reads page by page: 1,024 pages of 256 is 262,144 items, far above a patient's
# records or grants in a lifetime; a node that pages on and on is lying.
LIST_PAGES_MAX: Final = 1024
LIST_ITEMS_MAX: Final = 65_536  # and at most this many items, within LIST_DEADLINE_S
LIST_DEADLINE_S: Final = 300
# A node this many heights below the newest header the wallet has taken is behind (or replays
# an old state); honest nodes are at most a block apart. It is asked again, up to
# BEHIND_RETRIES times BEHIND_WAIT_S, before it is called behind.
HEIGHT_SLACK: Final = 2
BEHIND_RETRIES: Final = 3
BEHIND_WAIT_S: Final = 0.5



async def fetch_pin(connection: NodeConnection, key_file: Path, genesis_hash: bytes) -> Pin:
    """Pin the network of `genesis_hash` for `key_file`: the genesis document comes from the
    node, and must hash to it (else the node lied)."""
    answer = await connection.request(QueryRequest("genesis", None, None))
    if not isinstance(answer, GenesisResponse):
        raise connection.lied(f"it answered a genesis query with {type(answer).__name__}")
    try:
        return trust.pin_fetched(key_file, genesis_hash, answer.genesis)
    except trust.PinError as error:
        raise connection.lied(str(error)) from None


@dataclass(frozen=True, slots=True)
class ProvenPolicy:
    """A patient's emergency policy and the network's emergency key, as proven by state proofs
    (the key is nil on a network without break-glass)."""

    key: EmergencyKeyState | None
    allowed_tags: tuple[bytes, ...]


@dataclass
class CheckedNode:
    """One node, asked by a wallet that believes none: what it acts on is proven against
    headers that the light client takes from the pinned genesis (`pin`)."""

    identity: crypto.Identity
    connection: NodeConnection
    pin: Pin
    fresh_ms: int = FRESH_MS_DEFAULT
    proven_at: list[int] = field(default_factory=list)  # the heights of the proofs it checked

    @property
    def me(self) -> bytes:
        return self.identity.public_key

    @property
    def chain_id(self) -> str:
        """The chain it signs for: the pinned genesis's, never a node's word."""
        return self.pin.chain_id

    # --- plumbing ---------------------------------------------------------------------------

    async def _next_nonce(self) -> int:
        """The nonce to sign with: one above the signer's last nonce on chain, proven. Not the
        node's word: a node that named a nonce ahead could keep the signed transaction and
        submit it later (a revoked grant back in force). The node's own answer is checked for
        its chain id."""
        answer = self._expect(await self.connection.request(QueryRequest("nonce", None, None)),
                              NonceResponse)
        if answer.chain_id != self.chain_id:
            raise self.connection.lied(f"it claims to be of chain {answer.chain_id!r}; the "
                                       f"pinned genesis is of chain {self.chain_id!r}")
        key = NONCE + self.me
        used = self._decoded(key, (await self._prove([key]))[key], SignerNonce)
        return (used.nonce if used is not None else 0) + 1

    def _expect(self, answer: Any, cls: type[T]) -> T:
        """`answer` if it is of the kind asked for; else the node lied."""
        if not isinstance(answer, cls):
            raise self.connection.lied(f"it answered with {type(answer).__name__}, not "
                                       f"{cls.__name__}")
        return answer

    async def _submit(self, tx: AnyTx) -> SubmitResponse:
        """Submit and wait: final only when shown in a block that the light client takes. Until
        then the transaction is in flight (kept in the pin): no state without it is believed."""
        self.pin.set_pending(trust.Pending(tx.nonce, tx.hash, now_ms()))
        try:
            answer = await self.connection.request(SubmitRequest(tx, SUBMIT_WAIT_MS_MAX))
        except Refused:
            # Refused, not in flight. (A node that forwards it and says so anyway is caught by
            # the user: the command fails, and the next one finds the transaction done.)
            self.pin.refused(tx.nonce)
            raise
        if not isinstance(answer, SubmitResponse) or answer.tx_hash != tx.hash:
            raise self.connection.lied("it answered a submission with something else")
        if answer.height is None:
            raise WalletError(f"transaction {tx.hash.hex()} was accepted but not final within "
                              f"{SUBMIT_WAIT_MS_MAX // 1000} s; check later")
        if answer.inclusion is None:
            raise self.connection.lied(f"it called transaction {tx.hash.hex()[:16]} final at "
                                       f"height {answer.height} without a block to show it in")
        try:
            proofs.verify_inclusion(answer.inclusion, tx.hash, answer.height, self.pin.trusted)
        except VerificationError as error:
            raise self.connection.lied(f"transaction {tx.hash.hex()[:16]} final at height "
                                       f"{answer.height}: {error}") from None
        self.pin.settled(tx.nonce, answer.height)  # no state from before it is believed again
        return answer

    async def _prove(self, keys: Sequence[bytes]) -> dict[bytes, bytes | None]:
        """The values (None: absent) of state keys, each proven against a header that the light
        client takes from the pinned genesis, recent (`fresh_ms`), and not behind what this
        wallet knows (`_behind`). A refusal is the node's (Refused); an answer that does not
        hold up, or is too old, is a lie (Lied). A node a block or two behind is given a moment
        to catch up first."""
        values: dict[bytes, bytes | None] = {}
        nonce_key = NONCE + self.me
        for at in range(0, len(keys), PROOF_KEYS_MAX - 1):
            chunk = tuple(keys[at:at + PROOF_KEYS_MAX - 1])
            # With a transaction of ours in flight, every answer must show it (our nonce).
            asked = chunk if nonce_key in chunk or self.pin.pending is None else (
                *chunk, nonce_key)
            for attempt in range(BEHIND_RETRIES + 1):
                answer = self._expect(await self.connection.request(StateProofRequest(asked)),
                                      StateProofResponse)
                try:
                    proven = proofs.verify_state_answer(answer, asked, self.pin.trusted)
                except VerificationError as error:
                    raise self.connection.lied(f"its proof does not hold up: {error}") from None
                behind = self._behind(proven, nonce_key)
                if behind is None:
                    break
                if attempt == BEHIND_RETRIES:
                    raise self.connection.stale(behind)
                await trio.sleep(BEHIND_WAIT_S)
            age_ms = now_ms() - proven.time_ms
            if age_ms > self.fresh_ms:
                raise self.connection.stale(
                    f"its newest certified header (height {proven.height}) is {age_ms // 1000} "
                    f"s old, more than the {self.fresh_ms // 1000} s allowed: it is behind, cut "
                    f"off, or hiding something newer")
            self.pin.moved_to(proven.trusted)
            self.proven_at.append(proven.height)
            values.update(proven.values)
        return values

    def _behind(self, proven: proofs.Proven, nonce_key: bytes) -> str | None:
        """Why a proven state is older than this wallet knows the chain to be, if it is: below
        the wallet's own newest final transaction (its floor), well below the newest header it
        has taken, or without its transaction in flight. A state from before a revocation is
        refused so, however recent its header."""
        pin = self.pin
        if proven.height < pin.floor:
            return (f"it proves at height {proven.height}, below height {pin.floor}, where this "
                    f"wallet's own last transaction is final")
        if proven.height < pin.trusted.height - HEIGHT_SLACK:
            return (f"it proves at height {proven.height}, below height {pin.trusted.height}, "
                    f"which this wallet has already seen certified")
        pending = pin.pending_now(now_ms())
        if pending is not None:
            used = self._decoded(nonce_key, proven.values.get(nonce_key), SignerNonce)
            if (used.nonce if used else 0) < pending.nonce:
                return (f"its state at height {proven.height} does not hold this wallet's "
                        f"transaction {pending.tx_hash.hex()[:16]} (nonce {pending.nonce}) yet: "
                        f"it is behind, or hides it")
        return None

    def _decoded(self, key: bytes, raw: bytes | None, cls: type[M]) -> M | None:
        if raw is None:
            return None
        try:
            return decode_value(raw, cls, key)
        except CorruptState as error:  # a proven value that does not decode: not of this chain
            raise self.connection.lied(f"a proven value does not decode: {error}") from None

    async def _proven_record(self, record_id: bytes) -> RecordState:
        """The record's state, proven; Refused (`record_not_readable`) when it is no record this
        wallet may read: an unknown id, another patient's record and an erased one of another
        patient get that one answer (ledger/reading.py), which is a refusal, not a lie. A proof
        of a record's absence is a lie: no node may give one."""
        key = RECORD + record_id
        record = self._decoded(key, (await self._prove([key]))[key], RecordState)
        if record is None:
            raise self.connection.lied("it proved a record's absence, which it may not")
        return record

    async def _proven_grants(self, items: Iterable[GrantItem],
                             extra: Sequence[bytes] = ()) -> tuple[list[GrantState],
                                                                    dict[bytes, bytes | None]]:
        """The proven state of each listed grant, each checked to be the grant listed and still
        in force (not revoked, not expired by the wallet's clock), and the proven values of
        `extra` keys (asked in the same answer)."""
        items = list(items)
        for item in items:
            if item.grant.hash != item.grant_id:
                raise self.connection.lied(f"it listed a grant whose transaction is not grant "
                                           f"{item.grant_id.hex()[:16]}")
        keys = [GRANT + item.grant_id for item in items]
        try:
            values = await self._prove([*keys, *extra])
        except Refused as refusal:
            if refusal.code == "not_found" and items:
                raise self.connection.lied(f"it listed grants that it cannot prove on chain "
                                           f"({refusal})") from None
            raise
        now = now_ms()
        proven = []
        for item, key in zip(items, keys, strict=True):
            state = self._decoded(key, values[key], GrantState)
            name = item.grant_id.hex()[:16]
            if state is None:
                raise self.connection.lied(f"it listed grant {name}, which is not on chain")
            if state.revoked_height is not None:
                raise self.connection.lied(f"it listed grant {name} as in force; the chain shows "
                                           f"it revoked at height {state.revoked_height}")
            if state.expires_at_ms is not None and now >= state.expires_at_ms:
                raise self.connection.lied(f"it listed grant {name} as in force; it expired")
            if (state.patient, state.grantee) != (item.consent.signer, item.consent.grantee):
                raise self.connection.lied(f"it listed grant {name} with other parties than "
                                           f"the chain's")
            if state.purposes != grant_purposes(item.consent):
                raise self.connection.lied(f"it listed grant {name} with other purposes than "
                                           f"the chain's")
            proven.append(state)
        return proven, {key: values[key] for key in extra}

    async def _proven_policy(self, patient: bytes,
                             values: dict[bytes, bytes | None] | None = None) -> ProvenPolicy:
        """The network's emergency key (genesis, then certified re-sharing) and the patient's
        policy, proven (`values`: already proven in a larger answer)."""
        keys = [EMERGENCY_KEY, EMERGENCY_POLICY + patient]
        if values is None:
            values = await self._prove(keys)
        key = self._decoded(EMERGENCY_KEY, values[EMERGENCY_KEY], EmergencyKeyState)
        policy = self._decoded(keys[1], values[keys[1]], EmergencyPolicyState)
        return ProvenPolicy(key, policy.allowed_tags if policy else ())

    async def _pages(self, what: str, patient: bytes | None) -> list[Any]:
        """Every item of a list query, page after page (the node pages by 256); at most
        LIST_PAGES_MAX pages, each cursor past the one before, or the node lied."""
        items: list[Any] = []
        after: bytes | None = None
        by_query: dict[str, type[RecordsResponse | GrantsResponse | AuditResponse]] = {
            "records": RecordsResponse, "audit": AuditResponse}
        expected = by_query.get(what, GrantsResponse)
        with trio.move_on_after(LIST_DEADLINE_S):
            for _ in range(LIST_PAGES_MAX):
                answer = await self.connection.request(QueryRequest(what, patient, after))
                page: RecordsResponse | GrantsResponse | AuditResponse = self._expect(
                    answer, expected)
                items.extend(page.items)
                if len(items) > LIST_ITEMS_MAX:
                    raise self.connection.lied(f"its list ran past {LIST_ITEMS_MAX} items")
                if page.cursor is None:
                    return items
                if after is not None and page.cursor <= after:
                    raise self.connection.lied("its list's cursor went back")
                after = page.cursor
            raise self.connection.lied(f"its list ran past {LIST_PAGES_MAX} pages")
        raise self.connection.lied(f"its list took more than {LIST_DEADLINE_S} s")

    async def _records(self, patient: bytes | None) -> list[RecordItem]:
        return await self._pages("records", patient)

    async def _own_records(self) -> list[RecordItem]:
        """The patient's records as listed, each with the anchor that hashes to its id: what a
        re-wrap takes from an item (its tags, its ciphertext hash, the patient's own key wrap)
        is then the record's own, not another record's passed off under its id."""
        items = await self._records(None)
        for item in items:
            if item.anchor.hash != item.record_id or item.anchor.patient != self.me:
                raise self.connection.lied(f"it listed record {item.record_id.hex()[:16]} with "
                                           f"an anchor that is not its own")
        return items

    async def _on_chain(self, items: list[RecordItem]) -> list[RecordItem]:
        """Of the listed records that a re-wrap would use, those proven on chain, the patient's
        and not erased, as the anchor says: a made-up record (a copy of another record's key
        wrap under tags in scope) or an erased one passed off as live is a lie."""
        keys = [RECORD + item.record_id for item in items]
        try:
            values = await self._prove(keys) if keys else {}
        except Refused as refusal:
            # It listed them as this patient's own: it cannot then call them unreadable.
            if refusal.code == NOT_READABLE:
                raise self.connection.lied(f"it listed records as yours that it then will not "
                                           f"prove to you ({refusal})") from None
            raise
        live = []
        for item, key in zip(items, keys, strict=True):
            record = self._decoded(key, values[key], RecordState)
            short = item.record_id.hex()[:16]
            if record is None or (record.patient, record.ciphertext_hash, record.tags) != (
                    self.me, item.anchor.ciphertext_hash, item.anchor.tags):
                raise self.connection.lied(f"it listed record {short}, which is not on chain "
                                           f"as listed")
            if record.erased_height is None:
                live.append(item)
            elif item.state.erased_height is None:
                raise self.connection.lied(f"it listed record {short} as live; it is erased")
        return live

    async def _grants(self, what: str, patient: bytes | None) -> list[GrantItem]:
        return await self._pages(what, patient)
