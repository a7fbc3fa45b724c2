"""The fuzz targets: one per family of decoders of outside bytes, each a function of one input.

A target feeds its input to every decoder of its family. A decoder may refuse an input only with
its own typed errors (the codec's `CodecError` and its subclasses, `ConfigError`, `KeyFileError`,
`GenesisError`, `RpcError`, ...), so a target catches exactly those, and any other exception
escapes: atheris reports it as a crash, the test suite as a failure. Where a decoder accepts, the
target checks a property of what it made, so that a silent misdecode is found too: a canonical
decoder's result re-encodes to the input, bytes cut or joined by hand (a signature left off, a
block or a batch joined from its parts' encodings) agree with the codec, and a file's document
read back from what the node writes of it is the same again. A property that fails is an
AssertionError, a finding like any other.

`TARGETS` lists them; `decoders` names what each one reaches, which tests/test_fuzz.py holds
against every decoder in the code (a new one without a target fails it), as it holds every
message kind against the seed corpus.
"""

from __future__ import annotations

import functools
import importlib
import json
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
import trio

from healthnode import codec, limits
from healthnode.admin import rpc, server
from healthnode.codec import CodecError, SchemaViolation
from healthnode.consensus.safety import SafetyStateError, decode_safety_state
from healthnode.errors import ConfigError, GenesisError, HomeError, KeyFileError, StoreError
from healthnode.home import keys, node_key
from healthnode.home.backup import BackupManifest, RestoreMark, backup_manifest_from_bytes
from healthnode.home.config import config_from_bytes, parse_config
from healthnode.ledger import smt
from healthnode.ledger.state import CorruptState, decode_value
from healthnode.net.framing import (
    VARINT_BYTES_MAX,
    FrameDecoder,
    FramedStream,
    FrameError,
    encode_uvarint,
)
from healthnode.net.gossip import HELLO_BYTES_MAX
from healthnode.protocol import block as blocks
from healthnode.protocol import client, evidence, genesis, schema, statesync, wire
from healthnode.protocol.signed import Signed
from healthnode.protocol.state import ActLine, act_count_decode, act_count_encode
from healthnode.protocol.tx import decode_tx
from healthnode.wallet import fhir, trust

# Every module that defines message kinds: importing them all registers every kind
# (tests/test_fuzz.py finds the kinds in the source and holds them against the seeds).
MESSAGE_MODULES: Final = (
    "healthnode.protocol.tx",
    "healthnode.protocol.block",
    "healthnode.protocol.genesis",
    "healthnode.protocol.client",
    "healthnode.protocol.wire",
    "healthnode.protocol.state",
    "healthnode.consensus.safety",
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Target:
    """A fuzz target: `run` takes one input and says whether a decoder of the family accepted
    it; `decoders` are the functions it feeds; `max_len` is the largest input libFuzzer makes
    (the decoder's own bound where that is small, else enough for deep nesting and long
    numbers, the inputs that break parsers)."""

    name: str
    run: Callable[[bytes], bool]
    decoders: tuple[Callable[..., Any], ...]
    max_len: int

    @property
    def summary(self) -> str:
        return " ".join((self.run.__doc__ or "").strip().split("\n\n")[0].split())


@functools.cache
def every_kind() -> tuple[type[schema.Message], ...]:
    """Every registered message class, all of MESSAGE_MODULES imported."""
    for module in MESSAGE_MODULES:
        importlib.import_module(module)
    return schema.registered_messages()


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never waits (its awaits all complete at once) to its end, without an
    event loop: the frame reader and the admin methods over in-memory sources are such."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise AssertionError("the coroutine waited for something that never comes")


# --- properties ---------------------------------------------------------------------------------


def _assert_canonical(message: schema.Message, data: bytes) -> None:
    """What a decoded message must satisfy: it is `data`'s one encoding by msgspec and by the
    codec, the slow walk that names refusals accepts it too (the two checkers agree), decoding
    its encoding gives it again, the same fields built by our code encode to `data`, and a
    signed message's unsigned encoding, cut by hand, is the codec's."""
    cls = type(message)
    if not schema.holds_added_fields(cls):  # else msgspec writes the added fields' defaults
        assert msgspec.msgpack.encode(message) == data, f"{cls.__name__} re-encodes differently"
    assert message.encode() == data, f"{cls.__name__} re-encodes differently"
    wire_value = codec.unpack(data, len(data))
    schema._check_message(wire_value, "message", (cls,))
    assert schema.decode_message(data, cls, len(data)) == message
    rebuilt = cls(**{name: getattr(message, name) for name, _ in cls.WIRE_FIELDS})
    assert rebuilt.encode() == data, f"{cls.__name__} built from its fields encodes differently"
    if isinstance(message, Signed):
        unsigned = codec.unpack(message.unsigned_encoding(), len(data))
        assert unsigned == wire_value[:-1], f"{cls.__name__}: the unsigned encoding is wrong"


def _decoded(decode: Callable[[bytes], schema.Message], data: bytes) -> schema.Message | None:
    """The message `decode` makes of `data`, checked; None when it refuses, which it must do
    naming the problem: msgspec's own words (a position, `$[2][0]`) under the path `message`
    mean that the slow walk found nothing where msgspec refused, the two checkers disagreeing."""
    try:
        message = decode(data)
    except SchemaViolation as error:
        assert error.path != "message" or not ("`$" in error.problem
                                               or "Expected" in error.problem), str(error)
        return None
    except CodecError:
        return None
    _assert_canonical(message, data)
    return message


# --- the canonical codec and the message kinds --------------------------------------------------


def codec_target(data: bytes) -> bool:
    """codec.unpack, the canonical msgpack under every message.

    What it accepts holds only the wire's types and re-encodes to the input; the walk that a
    schema does instead of the type check accepts the same bytes as the same value."""
    try:
        value = codec.unpack(data, limits.BLOCK_BYTES_MAX)
    except CodecError:
        return False
    assert codec.pack(value) == data, "unpack accepted a non-canonical encoding"
    assert codec.unpack(data, len(data), schema_checks_types=True) == value
    pending = [value]
    while pending:
        item = pending.pop()
        if type(item) is list:
            pending.extend(item)
        else:
            assert type(item) in (int, bytes, str, type(None)), f"{type(item).__name__} decoded"
    return True


def message_target(data: bytes) -> bool:
    """schema.decode_message with every registered message kind expected.

    The first items of the input choose the kind, so one target reaches all of them (the
    state records a wallet takes from a proof and the safety state too); what decodes must
    pass `_assert_canonical`."""
    return _decoded(lambda raw: schema.decode_message(raw, every_kind(), limits.BLOCK_BYTES_MAX),
                    data) is not None


def tx_target(data: bytes) -> bool:
    """protocol.tx.decode_tx: a transaction from a wallet, a peer's batch or the admin socket."""
    return _decoded(decode_tx, data) is not None


def gossip_target(data: bytes) -> bool:
    """protocol.wire.decode_gossip and the gossip stream's Hello.

    A decoded TxBatch or ProposalMessage must also be what the node's own encoders, which join
    the parts' encodings by hand, make of its parts."""
    message = _decoded(wire.decode_gossip, data)
    if isinstance(message, wire.TxBatch):
        assert wire.encode_tx_batch([tx.encode() for tx in message.txs]) == data
    if isinstance(message, wire.ProposalMessage):
        assert wire.encode_proposal_message(message.proposal, message.block) == data
    hello = _decoded(lambda raw: schema.decode_message(raw, wire.Hello, HELLO_BYTES_MAX), data)
    return message is not None or hello is not None


def sync_target(data: bytes) -> bool:
    """protocol.wire.decode_sync_request and decode_sync_block: the block sync protocol's
    frames; protocol.statesync.decode_statesync_request and decode_statesync_answer: the state
    sync protocol's."""
    request = _decoded(wire.decode_sync_request, data)
    item = _decoded(wire.decode_sync_block, data)
    state_request = _decoded(statesync.decode_statesync_request, data)
    answer = _decoded(statesync.decode_statesync_answer, data)
    return any(found is not None for found in (request, item, state_request, answer))


def blob_target(data: bytes) -> bool:
    """protocol.wire.decode_blob_request and decode_blob_item: the ciphertext protocol's
    frames."""
    request = _decoded(wire.decode_blob_request, data)
    item = _decoded(wire.decode_blob_item, data)
    return request is not None or item is not None


def client_target(data: bytes) -> bool:
    """protocol.client.decode_request and decode_response: a wallet's request to a node, and
    the node's answer to a wallet."""
    request = _decoded(client.decode_request, data)
    response = _decoded(client.decode_response, data)
    return request is not None or response is not None


def consensus_target(data: bytes) -> bool:
    """protocol.block.decode_block and decode_consensus_message, with the evidence rules.

    Decoded evidence is given to the evidence functions as a peer's evidence would be: they
    may find it wrong, never raise."""
    block = _decoded(blocks.decode_block, data)
    if isinstance(block, blocks.Block):
        assert block.computed_txs_root() == blocks.txs_root(block.txs)
    message = _decoded(blocks.decode_consensus_message, data)
    if isinstance(message, blocks.DuplicateVote | blocks.DuplicateProposal):
        evidence.evidence_key(message)
        evidence.evidence_height(message)
        signer = evidence.evidence_signer(message)
        evidence.check_evidence(message, [signer], lambda _signed: True)
        evidence.check_evidence(message, [], lambda _signed: False)
    return block is not None or message is not None


def genesis_target(data: bytes) -> bool:
    """protocol.genesis.genesis_from_bytes and draft_from_bytes: a genesis file (a node's, one a
    wallet is given, or a draft a network's founder assembles).

    A genesis or a draft read back from the text the node writes of it is the same again; what
    one accepts as a genesis it accepts as a draft, and a draft is refused as a genesis only for
    having no authority."""
    try:
        draft = genesis.draft_from_bytes(data, "genesis.json")
    except GenesisError:
        try:
            genesis.genesis_from_bytes(data, "genesis.json")
        except GenesisError:
            return False
        raise AssertionError("a genesis that is no draft") from None
    assert genesis.draft_from_bytes(genesis.genesis_text(draft).encode(), "genesis.json") == draft
    try:
        made = genesis.genesis_from_bytes(data, "genesis.json")
    except GenesisError:
        assert not draft.authorities, "a draft with authorities that is no genesis"
        return True
    assert made == draft.genesis() and genesis.GenesisDraft.of(made) == draft
    again = genesis.genesis_from_bytes(genesis.genesis_text(made).encode(), "genesis.json")
    assert again == made and again.hash == made.hash
    assert schema.decode_message(made.encode(), genesis.Genesis, limits.GENESIS_BYTES_MAX) == made
    return True


def _state_classes() -> tuple[type[schema.Message], ...]:
    return tuple(cls for cls in every_kind() if cls.__module__ == "healthnode.protocol.state")


def store_target(data: bytes) -> bool:
    """What a node reads back from its chain store, which a restore takes from a backup
    directory: consensus.safety.decode_safety_state, ledger.smt.decode_node,
    ledger.state.decode_value (each state record), home.backup.RestoreMark.decode, and the act
    lines and count of protocol.state (which a wallet also takes, proven, from a node).

    A tree node and a restore mark re-encode to what was decoded."""
    accepted = False
    try:
        decode_safety_state(data)
        accepted = True
    except SafetyStateError:
        pass
    try:
        node = smt.decode_node(data)
    except smt.TreeError:
        pass
    else:
        assert node.encode() == data, "a tree node re-encodes differently"
        accepted = True
    for cls in _state_classes():
        try:
            decode_value(data, cls, b"fuzz")
            accepted = True
        except CorruptState:
            pass
    try:
        mark = RestoreMark.decode(data)
    except StoreError:
        pass
    else:
        assert RestoreMark.decode(mark.encode()) == mark
        accepted = True
    try:  # a patient's act lines and their count (rules version 5), fixed-width
        line = ActLine.decode(data)
    except ValueError:
        pass
    else:
        assert line.encode() == data, "an act line re-encodes differently"
        accepted = True
    try:
        count = act_count_decode(data)
    except ValueError:
        pass
    else:
        assert act_count_encode(count) == data, "an act count re-encodes differently"
        accepted = True
    return accepted


# --- frames ------------------------------------------------------------------------------------

# The stream protocols' own limits, and a few small ones around the varint's 7-bit steps.
FRAME_LIMITS: Final = (1, 127, 128, 300, wire.SYNC_REQUEST_BYTES_MAX, HELLO_BYTES_MAX,
                       wire.BLOB_REQUEST_BYTES_MAX, 16_384, wire.GOSSIP_FRAME_BYTES_MAX,
                       client.CLIENT_FRAME_BYTES_MAX)
_CHUNK_BYTES: Final = (1, 2, 3, 5, 8, 13, 64, 1024)


def chunks_of(data: bytes, seed: int) -> list[bytes]:
    """`data` in pieces of sizes drawn by `seed`: the reads of a stream that delivers what it
    likes when it likes (py-libp2p's read returns any part of what arrived)."""
    draw = random.Random(seed)  # noqa: S311 - a replayable schedule of reads, not a secret
    pieces, at = [], 0
    while at < len(data):
        size = len(data) if seed == 0 else draw.choice(_CHUNK_BYTES)
        pieces.append(data[at:at + size])
        at += size
    return pieces


class _Reads:
    """A libp2p stream that returns the given reads, then end of stream."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = list(reads)

    async def read(self, _bytes_max: int) -> bytes:
        return self._reads.pop(0) if self._reads else b""


def frames_target(data: bytes) -> bool:
    """net.framing.FrameDecoder.feed, and FramedStream.receive over an in-memory stream.

    The first byte picks the frame limit, the second how the rest arrives in reads. No frame
    exceeds the limit and the decoder holds less than one frame (or one length) between
    reads; the frames and the stream's framing error are the same however the bytes arrive;
    the frames re-encode to the start of the input, and what follows them is one unfinished
    frame."""
    if len(data) < 2:
        return False
    limit = FRAME_LIMITS[data[0] % len(FRAME_LIMITS)]
    stream = data[2:]
    reads = chunks_of(stream, data[1])
    decoder = FrameDecoder(limit)
    frames: list[bytes] = []
    failed = False
    for piece in reads:
        try:
            frames += decoder.feed(piece)
        except FrameError:
            failed = True
            break
        assert decoder.buffered_bytes < max(limit, VARINT_BYTES_MAX), "it holds a frame or more"
    assert all(len(frame) <= limit for frame in frames), "a frame exceeds the limit"
    whole = FrameDecoder(limit)
    try:
        at_once = whole.feed(stream)
    except FrameError:
        assert failed, "the stream fails at once but not read by read"
    else:
        assert not failed, "the stream fails read by read but not at once"
        assert at_once == frames, "the frames depend on how the bytes arrive"
        framed = b"".join(encode_uvarint(len(frame)) + frame for frame in frames)
        assert stream.startswith(framed), "the frames do not re-encode to the input"
        assert FrameDecoder(limit).feed(stream[len(framed):]) == []
    received: list[bytes] = []
    framed_stream = FramedStream(_Reads(reads), b"", limit)
    try:
        while (frame := run_coroutine(framed_stream.receive())) is not None:
            received.append(frame)
    except FrameError:
        assert failed, "FramedStream fails where FrameDecoder does not"
    else:
        assert not failed, "FramedStream does not fail where FrameDecoder does"
    assert received == frames, "FramedStream and FrameDecoder disagree"
    return bool(frames)


# --- the admin socket -------------------------------------------------------------------------

_CHOICES: Final = frozenset({"add", "remove"})
Params = dict[str, Any]


def _utf8(text: str) -> bool:
    text.encode("utf-8")
    return True


# (a check of admin/rpc.py, what its value must then be), for a parameter `name` of `params`.
_PARAM_CHECKS: Final[tuple[tuple[Callable[[Params, str], Any],
                                 Callable[[Any, Params, str], bool]], ...]] = (
    (lambda params, name: rpc.require_int(params, name, -2**63, 2**63 - 1),
     lambda value, _params, _name: type(value) is int and -2**63 <= value < 2**63),
    (rpc.require_height,
     lambda value, _params, _name: type(value) is int and 1 <= value <= limits.HEIGHT_MAX),
    (lambda params, name: rpc.require_text(params, name, 64),
     lambda value, _params, _name: type(value) is str and len(value) <= 64
     and "\0" not in value and _utf8(value)),
    (rpc.require_hash,
     lambda value, params, name: type(value) is bytes and len(value) == 32
     and value.hex() == params[name].lower()),
    (rpc.require_public_key,
     lambda value, _params, _name: type(value) is bytes and len(value) == 32),
    (rpc.require_name,
     lambda value, _params, _name: type(value) is str
     and 1 <= len(value) <= limits.NAME_CHARS_MAX and value.isprintable()),
    (lambda params, name: rpc.require_choice(params, name, _CHOICES),
     lambda value, _params, _name: value in _CHOICES),
    (lambda params, name: rpc.require(params, name, list),
     lambda value, _params, _name: type(value) is list),
    (lambda params, _name: rpc.require_none(params),
     lambda _value, params, _name: not params),
)


def _checked_params(params: Params) -> None:
    """Every parameter check of admin/rpc.py on every parameter (and on one that is missing):
    each gives a value of its promise or refuses with INVALID_PARAMS."""
    for name in [*list(params)[:8], "missing"]:
        for check, holds in _PARAM_CHECKS:
            try:
                value = check(params, name)
            except rpc.RpcError as error:
                assert error.code == rpc.INVALID_PARAMS, f"a parameter check answered {error.code}"
                continue
            assert holds(value, params, name), f"a parameter check let {value!r} through"


async def _check_method(params: dict[str, Any]) -> dict[str, Any]:
    _checked_params(params)
    return {"checked": len(params)}


_METHODS: Final = {"check": _check_method}


def _assert_answer(answer: bytes, request_id: Any) -> dict[str, Any]:
    assert answer.endswith(b"\n") and answer.count(b"\n") == 1, "an answer is not one line"
    document: dict[str, Any] = json.loads(answer)
    assert document["jsonrpc"] == "2.0" and document["id"] == request_id
    if "error" in document:
        assert document["error"]["code"] != rpc.INTERNAL_ERROR, document["error"]["message"]
    return document


def admin_rpc_target(data: bytes) -> bool:
    """admin.rpc.parse_request, the parameter checks, and handle_line: one request line.

    A line is a request or an RpcError; every check gives what it promises or INVALID_PARAMS;
    handle_line answers one JSON line, with the request's id, never with an internal error."""
    accepted = False
    try:
        request = rpc.parse_request(data)
    except rpc.RpcError as error:
        assert error.code in (rpc.PARSE_ERROR, rpc.INVALID_REQUEST, rpc.INVALID_PARAMS)
    else:
        assert type(request.method) is str and request.method
        assert type(request.params) is dict
        _checked_params(request.params)
        accepted = True
    try:
        request_id = rpc.request_id_of(rpc.parse_document(data))
    except rpc.RpcError:
        request_id = None
    _assert_answer(run_coroutine(rpc.handle_line(data, _METHODS)), request_id)
    return accepted


class _Connection:
    """A client of the admin socket that sends the given reads, then closes, and keeps what it
    is sent."""

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = list(reads)
        self.sent = bytearray()

    async def receive_some(self, _bytes_max: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return self._reads.pop(0) if self._reads else b""

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.sent += data


def admin_socket_target(data: bytes) -> bool:
    """admin.server's connection loop, which cuts what a client sends into request lines.

    The first byte picks how the rest arrives in reads. Each complete line that is not blank
    gets exactly one answer, in order; an unfinished last line gets none."""
    if not data:
        return False
    stream = data[1:]
    connection = _Connection(chunks_of(stream, data[0]))

    async def serve() -> None:
        admitted = server.Connection(trio.CancelScope(), waiting_since=trio.current_time())
        await server._serve_connection(connection, admitted,  # type: ignore[arg-type]
                                       _METHODS, server.AdminLimits())

    trio.run(serve)
    lines = [line for line in stream.split(b"\n")[:-1] if line.strip()]
    answers = bytes(connection.sent).split(b"\n")
    assert answers[-1] == b"", "an answer is not a whole line"
    assert len(answers) - 1 == len(lines), f"{len(lines)} lines, {len(answers) - 1} answers"
    for line, answer in zip(lines, answers, strict=False):
        try:
            request_id = rpc.request_id_of(rpc.parse_document(line))
        except rpc.RpcError:
            request_id = None
        _assert_answer(answer + b"\n", request_id)
    return bool(lines)


# --- files -------------------------------------------------------------------------------------


def config_target(data: bytes) -> bool:
    """home.config.config_from_bytes (and parse_config): a node's config.toml.

    A config read back from the TOML the node writes of it is the same config."""
    try:
        config = config_from_bytes(data, "config.toml")
    except ConfigError:
        return False
    assert parse_config(config.to_toml(), "config.toml") == config
    return True


# A sealed key is opened with this passphrase when its file asks for little work; the seeds'
# sealed keys are sealed under it.
FUZZ_PASSPHRASE: Final = "fuzz passphrase"  # noqa: S105 (the seeds' test keys only)
_CHEAP_KDF_OPSLIMIT: Final = 3
_CHEAP_KDF_MEMLIMIT: Final = 1024 * 1024


def _passphrase_for(document: dict[str, Any]) -> str | None:
    """The passphrase to open `document` with: none when its key derivation would cost more
    than a few milliseconds (a file may ask for up to argon2id's "sensitive" limits, a second
    and 1 GiB, which the loader allows; that bound is tested, not fuzzed)."""
    params = document.get("encryption")
    if isinstance(params, dict):
        opslimit, memlimit = params.get("opslimit"), params.get("memlimit")
        if type(opslimit) is int and type(memlimit) is int and (
                opslimit > _CHEAP_KDF_OPSLIMIT or memlimit > _CHEAP_KDF_MEMLIMIT):
            return None
    return FUZZ_PASSPHRASE


def keys_target(data: bytes) -> bool:
    """home.keys.parse_key_document and open_identity (a key file from a home, --key-file or
    --key-fd), home.node_key.parse_env_file (--key-env-file) and
    home.keys.emergency_share_from_bytes and round_key_from_bytes.

    An opened key written again as a key file opens to the same identity; an emergency share
    and a round key written again read back the same."""
    accepted = False
    try:
        document = keys.parse_key_document(data, "node_key.json")
        identity = keys.open_identity(document, "node_key.json", _passphrase_for(document))
    except KeyFileError:
        pass
    else:
        again = keys.parse_key_document(keys.encode_key_file("node", identity, None), "again")
        assert keys.open_identity(again, "again").public_key == identity.public_key
        accepted = True
    try:
        node_key.key_from_env_file(data.decode("utf-8"), "node.env")
        accepted = True
    except (UnicodeDecodeError, KeyFileError):  # the loader refuses what is not UTF-8 first
        pass
    for decode, encode, name in (
            (keys.emergency_share_from_bytes, keys.encode_emergency_share, "emergency_share.json"),
            (keys.round_key_from_bytes, keys.encode_round_key, "emergency_round_key.json")):
        try:
            pair = decode(data, name)
        except KeyFileError:
            continue
        assert decode(encode(*pair), "again") == pair
        accepted = True
    return accepted


_MANIFEST_PATH: Final = Path("backup") / "backup.json"


def backup_target(data: bytes) -> bool:
    """home.backup.backup_manifest_from_bytes (BackupManifest.from_json): a backup's
    manifest, which `init --restore` reads from a directory it is given.

    A manifest read back from the JSON the node writes of it is the same manifest."""
    try:
        manifest = backup_manifest_from_bytes(data, _MANIFEST_PATH)
    except HomeError:
        return False
    assert BackupManifest.from_json(manifest.to_json(), _MANIFEST_PATH) == manifest
    return True


_PIN_PATH: Final = Path("patient.key.pin.json")


def pin_target(data: bytes) -> bool:
    """wallet.trust.pin_from_bytes: the wallet's pin file (its genesis and trusted head).

    A pin read back from the document the wallet writes of it is the same pin."""
    try:
        pin = trust.pin_from_bytes(data, _PIN_PATH)
    except trust.PinError:
        return False
    again = trust.pin_from_bytes(json.dumps(trust.pin_json(pin)).encode(), _PIN_PATH)
    assert again == pin
    return True


def fhir_target(data: bytes) -> bool:
    """wallet.fhir.fhir_resource_type and validate_fhir: a clinician's file, checked before
    the wallet encrypts it."""
    resource_type = fhir.fhir_resource_type(data)
    if resource_type is None:
        return False
    try:
        assert fhir.validate_fhir(data) == resource_type
    except fhir.FhirError:
        return False
    return True


TARGETS: Final[dict[str, Target]] = {target.name: target for target in (
    Target("codec", codec_target, (codec.unpack,), 8192),
    Target("message", message_target, (schema.decode_message,), 8192),
    Target("tx", tx_target, (decode_tx,), 8192),
    Target("gossip", gossip_target, (wire.decode_gossip,), 8192),
    Target("sync", sync_target,
           (wire.decode_sync_request, wire.decode_sync_block,
            statesync.decode_statesync_request, statesync.decode_statesync_answer), 8192),
    Target("blob", blob_target, (wire.decode_blob_request, wire.decode_blob_item), 8192),
    Target("client", client_target, (client.decode_request, client.decode_response), 8192),
    Target("consensus", consensus_target,
           (blocks.decode_block, blocks.decode_consensus_message, evidence.check_evidence),
           8192),
    Target("genesis", genesis_target,
           (genesis.genesis_from_bytes, genesis.Genesis.from_json, genesis.draft_from_bytes,
            genesis.GenesisDraft.from_json, genesis.GenesisDraft.unchecked_from_json), 16_384),
    Target("store", store_target,
           (decode_safety_state, smt.decode_node, decode_value, RestoreMark.decode,
            ActLine.decode, act_count_decode), 8192),
    Target("frames", frames_target, (FrameDecoder.feed, FramedStream.receive), 8192),
    Target("admin_rpc", admin_rpc_target,
           (rpc.parse_document, rpc.parse_request, rpc.handle_line, rpc.require,
            rpc.require_int, rpc.require_height, rpc.require_text, rpc.require_none,
            rpc.require_hex, rpc.require_public_key, rpc.require_hash, rpc.require_name,
            rpc.require_choice), 8192),
    Target("admin_socket", admin_socket_target, (server._serve_connection,), 8192),
    Target("config", config_target, (config_from_bytes, parse_config), 16_384),
    Target("keys", keys_target,
           (keys.parse_key_document, keys.open_identity, node_key.parse_env_file,
            node_key.key_from_env_file, keys.emergency_share_from_bytes,
            keys.round_key_from_bytes, keys._numbered_scalar_from_bytes),
           limits.KEY_FILE_BYTES_MAX),
    Target("backup", backup_target, (backup_manifest_from_bytes, BackupManifest.from_json),
           16_384),
    Target("pin", pin_target, (trust.pin_from_bytes,), 16_384),
    Target("fhir", fhir_target, (fhir.fhir_resource_type, fhir.validate_fhir), 8192),
)}


def printable_summary() -> str:
    """One line per target: its name and what it covers."""
    width = max(len(name) for name in TARGETS)
    return "\n".join(f"{name:<{width}}  {target.summary}" for name, target in TARGETS.items())

