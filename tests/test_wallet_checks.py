"""The wallet's own checks of what a node serves, against node answers made up in the test
(unit by unit; the real-process attacks are in tests/test_break_glass.py and
tests/test_liars.py): content forged by the node it talks to is never shown as the record, in a
read or in a break-glass read; an emergency key or commitment that is not the proven one is
refused; and one holder that answers with a wrap of its own making does not keep the honest
holders' shares from counting.

The state the wallet proves (the record, the emergency key) comes from `Proving`, a double of
the proof layer only: checking proofs against certified headers is tested in test_light.py,
test_wallet_flow.py and, against real lying nodes, test_liars.py."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import trio

from healthnode import crypto
from healthnode.crypto import threshold
from healthnode.ledger.proofs import Proven
from healthnode.ledger.reading import NOT_READABLE, NOT_READABLE_DETAIL
from healthnode.ledger.state import EMERGENCY_KEY, NONCE, RECORD
from healthnode.protocol.client import (
    EmergencyHolder,
    EmergencyInfoRequest,
    EmergencyInfoResponse,
    FetchRequest,
    FetchResponse,
    GrantsResponse,
    NonceResponse,
    QueryRequest,
    RecordItem,
    RecordsResponse,
    ShareRequest,
    ShareResponse,
)
from healthnode.protocol.genesis import (
    DEFAULT_PARAMS,
    Authority,
    EmergencyKey,
    Genesis,
    ShareCommitment,
)
from healthnode.protocol.schema import replace
from healthnode.protocol.state import EmergencyKeyState, RecordState, SignerNonce
from healthnode.protocol.tx import KeyWrap, RecordAnchor
from healthnode.wallet import sealing
from healthnode.wallet.checked import LIST_PAGES_MAX
from healthnode.wallet.commands import Wallet
from healthnode.wallet.connection import Lied, Refused, WalletError
from healthnode.wallet.trust import Pending, Pin

CHAIN = "test-chain"
PATIENT = crypto.Identity.from_seed(b"p" * 32)
PROVIDER = crypto.Identity.from_seed(b"e" * 32)
NODES = [crypto.Identity.from_seed(bytes([n]) * 32).public_key for n in range(1, 4)]
RECORD_TEXT = b"ALLERGIES: penicillin (anaphylaxis)"


def _record(key: bytes) -> tuple[RecordAnchor, bytes]:
    ciphertext = sealing.encrypt_record(key, PATIENT.public_key, RECORD_TEXT)
    anchor = RecordAnchor(PATIENT.public_key, 1, PATIENT.public_key, crypto.digest(ciphertext),
                          len(ciphertext), (b"t" * 32,),
                          (KeyWrap(PATIENT.public_key, b"w" * 80),), None).sign(PATIENT, CHAIN)
    return anchor, ciphertext


class Proving(Wallet):
    """A wallet whose proof layer answers from `proven` (state key -> encoded value)."""

    proven: dict[bytes, bytes | None]

    async def _prove(self, keys: Any) -> dict[bytes, bytes | None]:
        return {key: self.proven.get(key) for key in keys}


GENESIS = Genesis(CHAIN, 1, tuple(Authority(f"node{n}", key) for n, key in enumerate(NODES, 1)),
                  DEFAULT_PARAMS)


def _wallet(connection: Any, anchor: RecordAnchor, dealing: threshold.Dealing | None) -> Proving:
    """A provider's wallet pinned to GENESIS, whose proofs show `anchor`'s record and
    `dealing`'s emergency key."""
    wallet = Proving(PROVIDER, connection, Pin.of(GENESIS))
    record = RecordState(anchor.patient, anchor.signer, anchor.ciphertext_hash,
                         anchor.ciphertext_bytes, anchor.tags, None, None, 5, 1, None, None)
    wallet.proven = {RECORD + anchor.hash: record.encode()}
    if dealing is not None:
        key = EmergencyKey(dealing.public_key, dealing.threshold, tuple(
            ShareCommitment(NODES[i], i + 1, c) for i, c in enumerate(dealing.commitments)))
        wallet.proven[EMERGENCY_KEY] = EmergencyKeyState(key, 1, ()).encode()
    return wallet


class Holder:
    """One node: answers info (if asked) and its share request."""

    def __init__(self, index: int, answer: Any, info: Any = None) -> None:
        self.node_public_key = NODES[index - 1]
        self.name = f"node{index}"
        self.answer, self.info = answer, info
        self.others: dict[str, Holder] = {}

    def lied(self, what: str) -> Lied:
        return Lied(self.name, what)

    async def request(self, request: Any) -> Any:
        if isinstance(request, QueryRequest):
            return NonceResponse(1, CHAIN)
        if isinstance(request, EmergencyInfoRequest):
            return self.info
        assert isinstance(request, ShareRequest)
        return self.answer(request)

    async def dial_other(self, address: str) -> Holder:
        return self.others[address]


def _network(dealing: threshold.Dealing, anchor: RecordAnchor,
             answers: dict[int, Any]) -> Holder:
    holders = tuple(EmergencyHolder(i, NODES[i - 1], dealing.commitments[i - 1], f"node{i}")
                    for i in answers)
    info = EmergencyInfoResponse(anchor, dealing.public_key, dealing.threshold, holders)
    nodes = {i: Holder(i, answer, info) for i, answer in answers.items()}
    for node in nodes.values():
        node.others = {f"node{i}": other for i, other in nodes.items()}
    return nodes[min(nodes)]


def _honest(dealing: threshold.Dealing, index: int, wrapped: bytes, ciphertext: bytes) -> Any:
    def answer(request: ShareRequest) -> ShareResponse:
        partial, proof = threshold.decryption_share(dealing.shares[index - 1],
                                                    threshold.wrap_ephemeral(wrapped))
        return ShareResponse(request.record_id, index, partial, proof, wrapped,
                             ciphertext if request.want_ciphertext else None, b"\x02" * 32, 7)
    return answer


def _read(first: Holder, anchor: RecordAnchor,
          dealing: threshold.Dealing) -> tuple[bytes, dict[str, Any]]:
    wallet = _wallet(first, anchor, dealing)
    return trio.run(wallet.break_glass, anchor.hash, "emergency", None)


def _honest_network() -> tuple[threshold.Dealing, RecordAnchor, Holder]:
    """A 2-of-3 key, a record wrapped for it, and three honest holders (the first returned)."""
    dealing, key = threshold.deal(2, 3), os.urandom(32)
    anchor, ciphertext = _record(key)
    wrapped = threshold.wrap(dealing.public_key, key, threshold.WrapLabel(
        CHAIN, PATIENT.public_key, anchor.ciphertext_hash))
    return dealing, anchor, _network(dealing, anchor, {
        i: _honest(dealing, i, wrapped, ciphertext) for i in (1, 2, 3)})


def test_an_honest_network_reads_the_record() -> None:
    dealing, anchor, first = _honest_network()
    plaintext, report = _read(first, anchor, dealing)
    assert plaintext == RECORD_TEXT and report["shares_from"] == [1, 2]


def test_a_node_that_forges_the_content_with_a_key_of_its_own_is_not_believed() -> None:
    """The reviewer's attack: the node names its own emergency key, threshold 1 and itself as
    the only holder, and serves content it made, wrapped for that key under the real patient.
    The proven emergency key gives it away; were that passed, the anchor's ciphertext hash (the
    anchor hashes to the record id) would."""
    real, own = threshold.deal(2, 3), threshold.deal(1, 1)
    anchor, _ = _record(os.urandom(32))
    forged_key = os.urandom(32)
    forged = sealing.encrypt_record(forged_key, PATIENT.public_key, b"ALLERGIES: none")
    for label_hash in (crypto.digest(forged), anchor.ciphertext_hash):
        wrapped = threshold.wrap(own.public_key, forged_key, threshold.WrapLabel(
            CHAIN, PATIENT.public_key, label_hash))
        first = _network(own, anchor, {1: _honest(own, 1, wrapped, forged)})
        with pytest.raises(Lied, match="emergency key or threshold it named is not the chain"):
            _read(first, anchor, real)
        # Its own key as the chain's too (as if the proofs lied): the shares still fail.
        with pytest.raises(WalletError, match="valid decryption shares"):
            _read(first, anchor, own)


def test_a_node_that_substitutes_a_share_commitment_is_named() -> None:
    dealing, anchor, first = _honest_network()
    other = threshold.deal(2, 3)
    first.info = first.info.__class__(first.info.anchor, dealing.public_key, 2, (
        first.info.holders[0].__class__(1, NODES[0], other.commitments[0], "node1"),
        *first.info.holders[1:]))
    with pytest.raises(Lied, match="share holder 1's key or commitment is not the chain's"):
        _read(first, anchor, dealing)


def test_a_node_that_serves_another_anchor_is_named() -> None:
    dealing = threshold.deal(2, 3)
    anchor, ciphertext = _record(os.urandom(32))
    other, _ = _record(os.urandom(32))
    first = _network(dealing, other, {1: _honest(dealing, 1, b"", ciphertext)})
    with pytest.raises(Lied, match=r"node1 lied: the anchor it served is not record"):
        _read(first, anchor, dealing)


def test_one_holder_with_a_wrap_of_its_own_making_does_not_block_the_read() -> None:
    """Holder 1 answers first, with a wrap it made under the real key for the record's label
    (anyone can) and a valid share of it; holders 2 and 3 are honest."""
    dealing, key = threshold.deal(2, 3), os.urandom(32)
    anchor, ciphertext = _record(key)
    label = threshold.WrapLabel(CHAIN, PATIENT.public_key, anchor.ciphertext_hash)
    genuine = threshold.wrap(dealing.public_key, key, label)
    decoy = threshold.wrap(dealing.public_key, os.urandom(32), label)
    first = _network(dealing, anchor, {
        1: _honest(dealing, 1, decoy, ciphertext),
        2: _honest(dealing, 2, genuine, ciphertext),
        3: _honest(dealing, 3, genuine, ciphertext)})
    plaintext, report = _read(first, anchor, dealing)
    assert plaintext == RECORD_TEXT and report["shares_from"] == [2, 3]


class Fetching:
    node_public_key = NODES[0]
    name = "node1"

    def __init__(self, answer: FetchResponse) -> None:
        self.answer = answer

    def lied(self, what: str) -> Lied:
        return Lied(self.name, what)

    async def request(self, request: Any) -> Any:
        assert isinstance(request, FetchRequest)
        return self.answer


def test_a_read_checks_the_ciphertext_against_the_anchor() -> None:
    key = os.urandom(32)
    anchor, ciphertext = _record(key)
    sealed = sealing.wrap_key(PROVIDER.public_key, key)
    honest = FetchResponse(anchor.hash, anchor, ciphertext, sealed, b"\x02" * 32, 7)
    wallet = _wallet(Fetching(honest), anchor, None)
    wallet.proven_at.append(5)
    plaintext, _ = trio.run(wallet.get_record, anchor.hash, "treatment", None)
    assert plaintext == RECORD_TEXT
    # The node makes up content and seals a data key of its own to the reader.
    own_key = os.urandom(32)
    forged = sealing.encrypt_record(own_key, PATIENT.public_key, b"ALLERGIES: none")
    other, _ = _record(os.urandom(32))
    for lie, what in [
            (FetchResponse(anchor.hash, anchor, forged, sealing.wrap_key(
                PROVIDER.public_key, own_key), b"\x02" * 32, 7), "ciphertext it served"),
            (FetchResponse(anchor.hash, other, ciphertext, sealed, b"\x02" * 32, 7),
             "anchor it served")]:
        wallet = _wallet(Fetching(lie), anchor, None)
        with pytest.raises(Lied, match=f"node1 lied: the {what}"):
            trio.run(wallet.get_record, anchor.hash, "treatment", None)


def test_an_amended_or_erased_record_is_not_read_as_the_newest() -> None:
    anchor, _ = _record(os.urandom(32))
    newer = b"\x07" * 32
    for change, message in [({"superseded_by": newer}, f"amended: read its newest version, "
                                                        f"{newer.hex()}"),
                            ({"erased_height": 9, "erased_time_ms": 2}, "erased at height 9")]:
        wallet = _wallet(Fetching(None), anchor, None)  # type: ignore[arg-type]
        record = RecordState(anchor.patient, anchor.signer, anchor.ciphertext_hash,
                             anchor.ciphertext_bytes, anchor.tags, None, None, 5, 1, None, None)
        wallet.proven[RECORD + anchor.hash] = replace(record, **change).encode()
        with pytest.raises(WalletError, match=message):
            trio.run(wallet.get_record, anchor.hash, "treatment", None)


class Listing:
    """A node that answers list queries with the pages given, then the last one again."""

    node_public_key = NODES[0]
    name = "node1"

    def __init__(self, pages: list[Any]) -> None:
        self.pages = pages
        self.asked = 0

    def lied(self, what: str) -> Lied:
        return Lied(self.name, what)

    async def request(self, request: Any) -> Any:
        assert isinstance(request, QueryRequest)
        self.asked += 1
        return self.pages[min(self.asked, len(self.pages)) - 1]


def test_a_list_that_never_ends_or_goes_back_is_a_lie() -> None:
    """A node that pages on and on would hang the wallet (and grow its memory) for ever."""
    anchor, _ = _record(os.urandom(32))
    endless = Listing([RecordsResponse((), (n + 1).to_bytes(4, "big"))
                       for n in range(LIST_PAGES_MAX + 1)])
    with pytest.raises(Lied, match="ran past 1024 pages"):
        trio.run(_wallet(endless, anchor, None).list_records, None)
    assert endless.asked == LIST_PAGES_MAX
    back = Listing([RecordsResponse((), b"\x05"), RecordsResponse((), b"\x03")])
    with pytest.raises(Lied, match="cursor went back"):
        trio.run(_wallet(back, anchor, None).list_records, None)
    wrong = Listing([GrantsResponse((), None)])
    with pytest.raises(Lied, match="answered with GrantsResponse, not RecordsResponse"):
        trio.run(_wallet(wrong, anchor, None).list_records, None)


def test_a_record_listed_with_another_records_anchor_is_not_rewrapped() -> None:
    """The attack: record X (in the grant's scope) listed with record Y's anchor (out of scope,
    say an HIV test), so that the wallet would seal Y's data key to the grantee under X's id."""
    x, _ = _record(os.urandom(32))
    y, _ = _record(os.urandom(32))
    state = RecordState(x.patient, x.signer, x.ciphertext_hash, x.ciphertext_bytes, x.tags,
                        None, None, 5, 1, None, None)
    swapped = Listing([RecordsResponse((RecordItem(x.hash, y, state),), None)])
    wallet = _wallet(swapped, x, None)
    wallet.identity = PATIENT
    with pytest.raises(Lied, match="with an anchor that is not its own"):
        trio.run(wallet.grant, PROVIDER.public_key, [], [x.hash], False, None)


def test_a_made_up_or_erased_record_is_not_rewrapped() -> None:
    """A listed record of the patient's (its anchor hashing to its id, carrying a copy of
    another record's key wrap under tags in scope) that is not on chain, or is erased but listed
    as live, is a lie: its data key is never re-wrapped for the grantee."""
    made_up, _ = _record(os.urandom(32))
    live = RecordState(made_up.patient, made_up.signer, made_up.ciphertext_hash,
                       made_up.ciphertext_bytes, made_up.tags, None, None, 5, 1, None, None)
    for proven, message in [(None, "not on chain as listed"),
                            (replace(live, erased_height=6, erased_time_ms=2).encode(),
                             "listed record .* as live; it is erased")]:
        listing = Listing([RecordsResponse((RecordItem(made_up.hash, made_up, live),), None)])
        wallet = _wallet(listing, made_up, None)
        wallet.identity = PATIENT
        wallet.proven[RECORD + made_up.hash] = proven
        with pytest.raises(Lied, match=message):
            trio.run(wallet.grant, PROVIDER.public_key, [], [made_up.hash], False, None)


class Unreadable(Proving):
    """A node that proves nothing, calling every record unreadable."""

    async def _prove(self, keys: Any) -> dict[bytes, bytes | None]:
        raise Refused(NOT_READABLE, NOT_READABLE_DETAIL)


def test_a_record_listed_as_the_patients_own_then_called_unreadable_is_a_lie() -> None:
    """`record_not_readable` is an honest node's answer about a record the asker may not read
    (ledger/reading.py): a refusal, which the wallet shows and acts on nothing. Of a record the
    node has just listed as the patient's own it contradicts the listing: a lie."""
    record, _ = _record(os.urandom(32))
    state = RecordState(record.patient, record.signer, record.ciphertext_hash,
                        record.ciphertext_bytes, record.tags, None, None, 5, 1, None, None)
    listing = Listing([RecordsResponse((RecordItem(record.hash, record, state),), None)])
    wallet = Unreadable(PATIENT, listing, Pin.of(GENESIS))  # type: ignore[arg-type]
    with pytest.raises(Lied, match="listed records as yours that it then will not prove"):
        trio.run(wallet.grant, PROVIDER.public_key, [], [record.hash], False, None)
    with pytest.raises(Refused) as refused:  # of a record id alone: the refusal, as it is
        trio.run(wallet.get_record, record.hash, "treatment", None)
    assert refused.value.code == NOT_READABLE and not isinstance(refused.value, Lied)


def test_a_state_older_than_the_wallet_knows_is_behind() -> None:
    """Below the wallet's floor, well below its newest taken header, or without its
    transaction in flight: refused however recent (the light client's checks pass)."""
    anchor, _ = _record(os.urandom(32))
    wallet = _wallet(Fetching(None), anchor, None)  # type: ignore[arg-type]
    nonce_key = NONCE + wallet.me
    wallet.pin.trusted = replace(wallet.pin.trusted, height=20)
    wallet.pin.floor = 15

    def at(height: int, nonce: int) -> Proven:
        return Proven({nonce_key: SignerNonce(nonce).encode()}, height, 1, wallet.pin.trusted)

    assert "below height 15, where this wallet's own last transaction" in str(
        wallet._behind(at(14, 3), nonce_key))
    assert "below height 20, which this wallet has already seen" in str(
        wallet._behind(at(17, 3), nonce_key))
    assert wallet._behind(at(18, 3), nonce_key) is None  # a block or two behind: honest
    wallet.pin.pending = Pending(4, b"\x04" * 32, time.time_ns() // 1_000_000)
    assert "does not hold this wallet's transaction 0404040404040404 (nonce 4)" in str(
        wallet._behind(at(19, 3), nonce_key))
    assert wallet._behind(at(19, 4), nonce_key) is None
