"""Whether a record exists, or was erased, is told only to those who may read it: on a real
one-node network, keys that may not read a patient's records (a fresh stranger key, a provider
the patient granted nothing, an emergency provider its policy does not allow) ask about three
ids through every request of the client protocol that names a record (proofs of its keys, a
read, break-glass info and shares, an upload of its bytes, a submission that names it) and get
byte-identical answers for an id that was never a record's, a live record and an erased one;
the patient and its grantee get the precise answers (ledger/reading.py `record_sight`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from healthnode import crypto
from healthnode.crypto import Identity, threshold
from healthnode.ledger.reading import NOT_READABLE, NOT_READABLE_BYTES, NOT_READABLE_DETAIL
from healthnode.ledger.state import EMERGENCY_WRAP, RECORD, decode_value
from healthnode.protocol.client import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_PROTOCOL,
    ClientError,
    ClientRequest,
    EmergencyInfoRequest,
    FetchRequest,
    QueryRequest,
    RecordsResponse,
    ShareRequest,
    StateProofRequest,
    StateProofResponse,
    SubmitRequest,
    SubmitResponse,
    UploadRequest,
    UploadResponse,
    decode_response,
)
from healthnode.protocol.state import RecordState
from healthnode.protocol.tx import (
    AnyTx,
    ConsentGrant,
    EmergencyPolicy,
    EmergencyWrap,
    KeyWrap,
    RecordAnchor,
    RecordErase,
)
from healthnode.wallet.connection import NodeConnection, connect
from tests import wallet_cli as cli
from tests.cluster import CHAIN_ID, LAB_TAG, Cluster

NEVER = b"\x88" * 32  # no record has this id
# Ciphertexts of a padded length (1 KiB), as a wallet makes them (protocol/padding.py).
LIVE_BYTES = (b"a live record's ciphertext" * 8).ljust(1024, b".")
GONE_BYTES = (b"an erased record's ciphertext" * 8).ljust(1024, b".")


@dataclass
class World:
    cluster: Cluster
    patient: Identity
    grantee: Identity  # a provider with a grant in force that covers both records
    lab: Identity  # a provider the patient granted nothing
    er: Identity  # an emergency provider; the patient allows no emergency reads
    live: bytes
    gone: bytes  # erased
    gone_height: int

    @property
    def home(self) -> str:
        return str(self.cluster.homes[0])

    def ids(self) -> dict[str, bytes]:
        return {"never": NEVER, "live": self.live, "gone": self.gone}


def _amendment(me: bytes) -> bytes:
    """The bytes of an asker's own amendment, of a padded length."""
    return (b"an amendment of " + me).ljust(1024, b".")


def _anchor(who: Identity, nonce: int, body: bytes, supersedes: bytes | None = None
            ) -> RecordAnchor:
    return RecordAnchor(b"", nonce, who.public_key, crypto.digest(body), len(body), (LAB_TAG,),
                        (KeyWrap(who.public_key, b"w" * 80),), supersedes).sign(who, CHAIN_ID)


async def _ask(connection: NodeConnection, request: ClientRequest) -> bytes:
    """The node's answer frame, as sent."""
    stream = await connection._p2p.open_stream(
        connection.node_public_key, CLIENT_PROTOCOL, CLIENT_FRAME_BYTES_MAX)
    try:
        await stream.send(request.encode())
        raw = await stream.receive()
    finally:
        await stream.close()
    assert raw is not None
    return raw


def _ask_all(who: Identity, home: str, requests: list[ClientRequest]) -> list[bytes]:
    async def main() -> list[bytes]:
        async with connect(who, home) as connection:
            return [await _ask(connection, request) for request in requests]
    return trio.run(main)


def _final(who: Identity, home: str, *txs: AnyTx) -> list[int]:
    answers = _ask_all(who, home, [SubmitRequest(tx, 30_000) for tx in txs])
    heights = []
    for raw in answers:
        answer = decode_response(raw)
        assert isinstance(answer, SubmitResponse) and answer.height is not None, answer
        heights.append(answer.height)
    return heights


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    cluster = Cluster(tmp_path_factory.mktemp("existence") / "net", nodes=1)
    cluster.start_all()
    try:
        patient, grantee, lab, er = (Identity.generate() for _ in range(4))
        for who, roles in [(grantee, ["clinician"]), (lab, ["lab"]),
                           (er, ["clinician", "emergency"])]:
            done = cluster.admin(0, "provider_register", provider=who.public_key.hex(),
                                 roles=roles, display_name="Dr Test")
            cluster.wait_final([done["tx_hash"]], [0], 30)
        home = str(cluster.homes[0])
        for body in (LIVE_BYTES, GONE_BYTES):
            (answer,) = _ask_all(patient, home, [UploadRequest(body)])
            assert isinstance(decode_response(answer), UploadResponse)
        live, gone = _anchor(patient, 1, LIVE_BYTES), _anchor(patient, 2, GONE_BYTES)
        grant = ConsentGrant(b"", 3, grantee.public_key, ("read",), (), (LAB_TAG,), None, (),
                             None).sign(patient, CHAIN_ID)
        _final(patient, home, live, gone, grant)
        (gone_height,) = _final(patient, home, RecordErase(b"", 4, gone.hash).sign(
            patient, CHAIN_ID))
        yield World(cluster, patient, grantee, lab, er, live.hash, gone.hash, gone_height)
    finally:
        cluster.close()


def _requests(world: World, who: Identity, record_id: bytes,
              nonce: int = 1) -> dict[str, ClientRequest]:
    """Every request a wallet can send that names `record_id`, as `who` (each transaction
    signed with `nonce`, its next: each is refused)."""
    me = who.public_key
    assert world.cluster.genesis.emergency is not None
    wrap = threshold.wrap(world.cluster.genesis.emergency.public_key, b"\x07" * 32,
                          threshold.WrapLabel(CHAIN_ID, me, crypto.digest(b"x")))
    return {
        "prove_record": StateProofRequest((RECORD + record_id,)),
        "prove_wrap": StateProofRequest((EMERGENCY_WRAP + record_id,)),
        "prove_both": StateProofRequest((EMERGENCY_WRAP + record_id, RECORD + record_id)),
        "fetch": FetchRequest(record_id, None, "treatment", None, 0),
        "fetch_under_a_grant_id": FetchRequest(record_id, b"\x01" * 32, "treatment", None, 0),
        "emergency_info": EmergencyInfoRequest(record_id),
        "share": ShareRequest(record_id, "emergency", None, 1),
        "erase": SubmitRequest(RecordErase(b"", nonce, record_id).sign(who, CHAIN_ID), 0),
        "grant": SubmitRequest(ConsentGrant(
            b"", nonce, world.lab.public_key if who != world.lab else world.grantee.public_key,
            ("read",), (record_id,), (), None, (), None).sign(who, CHAIN_ID), 0),
        "policy": SubmitRequest(EmergencyPolicy(
            b"", nonce, (LAB_TAG,), (EmergencyWrap(record_id, wrap),)).sign(who, CHAIN_ID), 0),
        "amend": SubmitRequest(_anchor(who, nonce, _amendment(me), record_id), 0),
    }


def _by_bytes(world: World, body: bytes, who: Identity) -> dict[str, ClientRequest]:
    """The requests that name a record by its ciphertext: an upload of it and an anchor of it."""
    return {"upload": UploadRequest(body),
            "anchor_same_bytes": SubmitRequest(_anchor(who, 1, body), 0)}


def _error(raw: bytes) -> tuple[str, str]:
    answer = decode_response(raw)
    assert isinstance(answer, ClientError), answer
    return answer.code, answer.message


ASKERS: dict[str, Callable[[World], Identity]] = {
    "stranger": lambda w: Identity.generate(),  # a fresh key: keys cost nothing
    "provider_without_grant": lambda w: w.lab,
    "emergency_provider_not_allowed": lambda w: w.er,
}


@pytest.mark.parametrize("asker", ASKERS.values(), ids=ASKERS.keys())
def test_an_asker_who_may_not_read_gets_the_same_bytes_for_every_kind_of_id(
        world: World, asker: Callable[[World], Identity]) -> None:
    who = asker(world)
    me = who.public_key
    # Its own amendment's bytes, uploaded first: without them the anchor is refused for that.
    _ask_all(who, world.home, [UploadRequest(_amendment(me))])
    answers: dict[str, dict[str, bytes]] = {}
    for kind, record_id in world.ids().items():
        requests = _requests(world, who, record_id)
        answers[kind] = dict(zip(requests, _ask_all(who, world.home, list(requests.values())),
                                 strict=True))
    for name in answers["never"]:
        assert answers["never"][name] == answers["live"][name] == answers["gone"][name], (
            name, {kind: _error(answer[name]) for kind, answer in answers.items()})
    told = {name: _error(raw) for name, raw in answers["never"].items()}
    not_readable = (NOT_READABLE, NOT_READABLE_DETAIL)
    for name in ["prove_record", "prove_wrap", "prove_both", "fetch", "fetch_under_a_grant_id",
                 "erase", "grant", "policy", "amend"]:
        assert told[name] == not_readable, (name, told[name])
    # Break-glass: one without the emergency role is told so, whatever the id (public state).
    emergency = "emergency_info", "share"
    if who == world.er:
        assert {told[name] for name in emergency} == {not_readable}
    else:
        assert {told[name][0] for name in emergency} == {"reader_lacks_emergency_role"}
    # Its bytes, held by someone who may not read it: anchored, live or erased alike.
    by_bytes = {kind: dict(zip(requests, _ask_all(who, world.home, list(requests.values())),
                               strict=True))
                for kind, requests in [("live", _by_bytes(world, LIVE_BYTES, who)),
                                       ("gone", _by_bytes(world, GONE_BYTES, who))]}
    assert by_bytes["live"] == by_bytes["gone"]
    assert _error(by_bytes["live"]["upload"]) == (NOT_READABLE, NOT_READABLE_BYTES)
    assert _error(by_bytes["live"]["anchor_same_bytes"]) == not_readable
    # And no list shows them.
    (listed,) = _ask_all(who, world.home, [QueryRequest("records", world.patient.public_key,
                                                        None)])
    answer = decode_response(listed)
    assert isinstance(answer, RecordsResponse) and answer.items == ()


def _proven_record(raw: bytes) -> RecordState:
    answer = decode_response(raw)
    assert isinstance(answer, StateProofResponse), answer
    value = answer.proofs[0].value
    assert value is not None
    return decode_value(value, RecordState, answer.proofs[0].key)


@pytest.mark.parametrize("reader", ["patient", "grantee"])
def test_the_patient_and_its_grantee_get_the_precise_answers(world: World, reader: str) -> None:
    who = getattr(world, reader)
    nonce = 5 if reader == "patient" else 1  # the patient signed four transactions
    requests = {kind: _requests(world, who, record_id, nonce)
                for kind, record_id in world.ids().items()}
    gone = dict(zip(requests["gone"], _ask_all(who, world.home, list(requests["gone"].values())),
                    strict=True))
    assert _proven_record(gone["prove_record"]).erased_height == world.gone_height
    assert _error(gone["fetch"]) == (
        "record_erased", f"the patient erased this record at height {world.gone_height}")
    live = dict(zip(["prove_record", "erase"], _ask_all(
        who, world.home, [requests["live"]["prove_record"], requests["live"]["erase"]]),
        strict=True))
    assert _proven_record(live["prove_record"]).erased_height is None
    if reader == "patient":
        assert _error(gone["erase"])[0] == "record_already_erased"
        (upload,) = _ask_all(who, world.home, [UploadRequest(GONE_BYTES)])
        assert _error(upload)[0] == "record_erased"
    else:
        assert _error(live["erase"])[0] == "not_record_owner"
    # An id that no record has is no one's to read: the patient is told no more than anyone.
    (never,) = _ask_all(who, world.home, [requests["never"]["prove_record"]])
    assert _error(never) == (NOT_READABLE, NOT_READABLE_DETAIL)


def test_the_wallet_shows_the_refusal_and_acts_on_nothing(world: World, tmp_path: Path) -> None:
    """`record get` by a stranger's wallet: the same one-line refusal for every kind of id (a
    refusal, not a lie: the wallet names no node as lying), and nothing written."""
    people = cli.People(world.cluster, tmp_path)
    people.new("stranger", "patient")
    lines = set()
    for kind, record_id in world.ids().items():
        out = tmp_path / f"{kind}.out"
        lines.add(cli.refused(NOT_READABLE, "record", "get", *people.wallet(0, "stranger"),
                              record_id.hex(), "--out", str(out)))
        glass = cli.refused("reader_lacks_emergency_role", "record", "get",
                            *people.wallet(0, "stranger"), record_id.hex(), "--out", str(out),
                            "--break-glass")
        lines.add(glass)
        assert not out.exists()
    assert len(lines) == 2, lines
    assert not any("lie" in line or "lied" in line for line in lines), lines
