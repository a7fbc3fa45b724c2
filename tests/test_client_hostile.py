"""The client protocol against bad and unauthorised requests, on a real one-node network: each
gets a ClientError naming the problem, the node keeps serving, and nothing of it is stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from healthnode import crypto, limits
from healthnode.crypto import Identity
from healthnode.protocol.client import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_PROTOCOL,
    ClientError,
    NonceResponse,
    QueryRequest,
    SubmitRequest,
    UploadRequest,
    UploadResponse,
    decode_response,
)
from healthnode.protocol.tx import KeyWrap, RecordAnchor
from healthnode.wallet.connection import NodeConnection, Refused, connect
from tests.cluster import CHAIN_ID, Cluster


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    cluster = Cluster(tmp_path_factory.mktemp("client") / "net", nodes=1)
    cluster.start_all()
    try:
        yield cluster.homes[0]
    finally:
        cluster.close()


async def _raw(connection: NodeConnection, payload: bytes) -> ClientError:
    stream = await connection._p2p.open_stream(
        connection.node_public_key, CLIENT_PROTOCOL, CLIENT_FRAME_BYTES_MAX)
    await stream.send(payload)
    raw = await stream.receive()
    await stream.close()
    assert raw is not None
    answer = decode_response(raw)
    assert isinstance(answer, ClientError)
    return answer


async def test_garbage_and_unknown_kinds_are_answered_with_malformed_request(node: Path) -> None:
    async with connect(Identity.generate(), str(node)) as connection:
        for payload in [b"\xc1garbage", b"\x93\x05\x01\x02", b"\x92\x50\x01"]:
            answer = await _raw(connection, payload)
            assert answer.code == "malformed_request", answer
        # The node still serves this same wallet afterwards.
        assert isinstance(await connection.request(QueryRequest("nonce", None, None)),
                          NonceResponse)


async def test_an_anchor_without_its_ciphertext_is_refused(node: Path) -> None:
    patient = Identity.generate()
    anchor = RecordAnchor(b"", 1, patient.public_key, crypto.digest(b"never uploaded"), 100,
                          (bytes(32),), (KeyWrap(patient.public_key, b"k" * 80),), None
                          ).sign(patient, CHAIN_ID)
    async with connect(patient, str(node)) as connection:
        with pytest.raises(Refused) as refused:
            await connection.request(SubmitRequest(anchor, 0))
    assert refused.value.code == "ciphertext_missing"


async def test_uploads_beyond_the_per_key_budget_are_refused(node: Path) -> None:
    uploader = Identity.generate()
    size = limits.BLOB_BYTES_MAX
    fits = limits.PENDING_UPLOAD_BYTES_PER_CLIENT_MAX // size
    async with connect(uploader, str(node)) as connection:
        for index in range(fits):
            answer = await connection.request(UploadRequest(bytes([index]) * size))
            assert isinstance(answer, UploadResponse)
        with pytest.raises(Refused) as refused:
            await connection.request(UploadRequest(b"\xff" * size))
        assert refused.value.code == "upload_quota"
        # Another key still has its own budget.
    async with connect(Identity.generate(), str(node)) as other:
        assert isinstance(await other.request(UploadRequest(b"\xff" * 1000)), UploadResponse)


async def test_another_patients_audit_and_grants_are_refused(node: Path) -> None:
    someone = Identity.generate().public_key
    async with connect(Identity.generate(), str(node)) as connection:
        with pytest.raises(Refused) as audit:
            await connection.request(QueryRequest("audit", someone, None))
        assert audit.value.code == "not_your_audit"
        with pytest.raises(Refused) as grants:
            await connection.request(QueryRequest("patient_grants", someone, None))
        assert grants.value.code == "no_write_grant"


async def test_a_read_of_an_unknown_record_is_refused(node: Path) -> None:
    """As a record of another patient's is: an id is not told to exist (tests/test_existence.py)."""
    from healthnode.protocol.client import FetchRequest

    async with connect(Identity.generate(), str(node)) as connection:
        with pytest.raises(Refused) as refused:
            await connection.request(FetchRequest(bytes(32), None, "treatment", None, 0))
    assert refused.value.code == "record_not_readable"
