"""The seed corpus of each target: a few dozen small valid inputs and edge cases, made here.

The fuzzer mutates these first, so what they reach it reaches in its first seconds: a valid input
of every kind a decoder takes (the golden messages of tests/fixtures, the smallest of each kind,
and for every registered kind one built from its type hints, so a new kind has a seed without a
list to keep), files as the node writes them, and the inputs that break parsers (empty, truncated,
non-canonical, too deep, too long a number). Keys, signatures and the break-glass dealing are
made from fixed seeds, so the corpus is the same at every run of

    python -m healthnode.tools.fuzz --write-seeds [TARGET...]

which rewrites `corpus/<target>/` (kept in the repository; a file's name says what it is).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
import nacl.pwhash
import nacl.secret

from healthnode import codec, crypto
from healthnode.admin import rpc
from healthnode.codec import CodecError
from healthnode.crypto import threshold
from healthnode.home import keys
from healthnode.home.backup import BackupManifest, RestoreMark
from healthnode.home.config import NodeConfig, P2PSection
from healthnode.ledger import light, smt
from healthnode.net.framing import encode_frame
from healthnode.protocol import block as blocks
from healthnode.protocol import client, evidence, genesis, schema, statesync, wire
from healthnode.protocol.state import ActLine, act_count_encode
from healthnode.protocol.tx import TX_CLASSES
from healthnode.tools.fuzz.targets import FRAME_LIMITS, FUZZ_PASSPHRASE, TARGETS, every_kind
from healthnode.wallet import trust

CORPUS: Final = Path(__file__).resolve().parent / "corpus"
GOLDEN: Final = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "golden_messages.json"
CHAIN_ID: Final = "fuzz-chain"

Seeds = dict[str, bytes]


# --- messages built from their type hints -----------------------------------------------------


class _Unbuildable(Exception):
    pass


def _value(hint: Any, filled: bool) -> Any:
    """A value of the field type `hint`: its smallest, or (`filled`) with every optional part
    present and every list holding one item."""
    meta, markers = msgspec.Meta(), ()
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        meta = next((m for m in extras if isinstance(m, msgspec.Meta)), meta)
        markers = tuple(extras)
    low = meta.min_length or 0
    if typing.get_origin(hint) is Literal:
        return sorted(typing.get_args(hint))[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        if not filled and len(options) < len(typing.get_args(hint)):
            return None
        return _value(options[0], filled)
    if hint is bytes:
        return b"\x11" * low
    if hint is int:
        return meta.ge if meta.ge is not None else 0
    if hint is str:
        if meta.pattern is not None:  # the one patterned kind of string: a peer's address
            return "/ip4/127.0.0.1/tcp/26600"
        return "a" * low
    if typing.get_origin(hint) is tuple:
        count = max(low, 1) if filled else low
        if count > 1 and schema.SORTED_UNIQUE in markers:
            raise _Unbuildable("a set of several items")
        return tuple(_value(typing.get_args(hint)[0], filled) for _ in range(count))
    if isinstance(hint, type) and issubclass(hint, schema.Struct):
        return hint(**{name: _value(inner, filled) for name, inner in hint.WIRE_FIELDS})
    raise _Unbuildable(f"no value for {hint!r}")


def built(cls: type[schema.Message], filled: bool) -> bytes | None:
    """The encoding of a `cls` made of its fields' smallest (or `filled`) values; None when that
    is not a valid message (a field with rules beyond its type)."""
    try:
        message = cls(**{name: _value(hint, filled) for name, hint in cls.WIRE_FIELDS})
        return message.encode()
    except (_Unbuildable, CodecError):
        return None


def _golden() -> dict[str, list[bytes]]:
    by_class: dict[str, list[bytes]] = {}
    for entry in json.loads(GOLDEN.read_text()):
        by_class.setdefault(entry["class"], []).append(bytes.fromhex(entry["bytes"]))
    return {name: sorted(found, key=len) for name, found in by_class.items()}


def kind_seeds(classes: tuple[type[Any], ...], golden_per_kind: int = 1) -> Seeds:
    """For each class: its smallest golden encodings, and the ones built from its type hints."""
    golden = _golden()
    seeds: Seeds = {}
    for cls in classes:
        for index, data in enumerate(golden.get(cls.__name__, [])[:golden_per_kind]):
            seeds[f"golden-{cls.__name__}-{index}"] = data
        for filled in (False, True):
            made = built(cls, filled)
            if made is not None and made not in seeds.values():
                seeds[f"built-{cls.__name__}-{'filled' if filled else 'least'}"] = made
    return seeds


def _edges_of(valid: bytes) -> Seeds:
    """Broken forms of one valid message: truncated, one byte more, kind and version changed,
    a field too many, an integer in a longer form."""
    wire_value = codec.unpack(valid, len(valid))
    longer_int = valid.replace(codec.pack(wire_value[0]), b"\xcc" + bytes([wire_value[0]]), 1)
    return {
        "edge-truncated": valid[:-1],
        "edge-trailing-byte": valid + b"\x00",
        "edge-unknown-kind": codec.pack([250, 1, *wire_value[2:]]),
        "edge-unknown-version": codec.pack([wire_value[0], 9, *wire_value[2:]]),
        "edge-extra-field": codec.pack([*wire_value, 0]),
        "edge-kind-in-longer-form": longer_int,
    }


_MSGPACK_EDGES: Final[Seeds] = {
    "edge-empty": b"",
    "edge-nil": b"\xc0",
    "edge-empty-array": b"\x90",
    "edge-kind-only": b"\x91\x01",
    "edge-bool": b"\x92\xc3\x01",
    "edge-float": b"\x93\xcb" + bytes(8) + b"\x01\x01",
    "edge-map": b"\x81\x01\x02",
    "edge-ext": b"\xd4\x01\x00",
    "edge-bin-length-beyond-input": b"\xc6\xff\xff\xff\xff\x00",
    "edge-array-length-beyond-input": b"\xdd\xff\xff\xff\xff\x00",
    "edge-str-not-utf8": b"\xa2\xff\xfe",
    "edge-uint8-not-smallest": b"\xcc\x05",
    "edge-array16-not-smallest": b"\xdc\x00\x01\x00",
    "edge-deep": b"\x91" * 12 + b"\x00",
    "edge-int64-min": b"\xd3\x80" + bytes(7),
    "edge-uint64-max": b"\xcf" + b"\xff" * 8,
    "edge-two-values": b"\x00\x00",
}


# --- keys, a genesis and what hangs off it -----------------------------------------------------


def identity(number: int) -> crypto.Identity:
    return crypto.Identity.from_seed(bytes([number]) * crypto.SEED_BYTES)


def _scalars() -> Callable[[], int]:
    counter = itertools.count(1)
    return lambda: (next(counter) * 7919 + 12345) % threshold.L


def make_genesis(authorities: int = 4, emergency: bool = True,
                 rules: int = genesis.GENESIS_FORMAT) -> genesis.Genesis:
    """A valid genesis of fixed keys, with a break-glass key dealt from fixed scalars."""
    identities = [identity(i + 1) for i in range(authorities)]
    key = None
    if emergency:
        dealing = threshold.deal(threshold.quorum_threshold(authorities), authorities,
                                 _scalars())
        key = genesis.EmergencyKey(dealing.public_key, dealing.threshold, tuple(
            genesis.ShareCommitment(who.public_key, index + 1, commitment)
            for index, (who, commitment) in enumerate(zip(identities, dealing.commitments,
                                                          strict=True))))
    made = genesis.Genesis(
        chain_id=CHAIN_ID, genesis_time_ms=1_700_000_000_000,
        authorities=tuple(genesis.Authority(f"node{i}", who.public_key)
                          for i, who in enumerate(identities)),
        params=genesis.DEFAULT_PARAMS, emergency=key, format=rules)
    made.validate()
    return made


def _text(document: Any) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


def _signed_seeds() -> Seeds:
    """Messages signed by a fixed key: real evidence of an equivocation, a certified block."""
    signer = identity(1)
    votes = [blocks.Vote(blocks.PREVOTE, 5, 0, bytes([n]) * 32, b"").sign(signer, CHAIN_ID)
             for n in (1, 2)]
    proposals = [blocks.Proposal(5, 0, -1, bytes([n]) * 32, b"").sign(signer, CHAIN_ID)
                 for n in (1, 2)]
    header = blocks.Header(CHAIN_ID, 1, 1_700_000_000_000, bytes(32), None,
                           blocks.txs_root(()), blocks.evidence_root(()),
                           blocks.validators_hash([signer.public_key]), bytes(32),
                           signer.public_key)
    block = blocks.Block(header, (), ())
    certificate = blocks.CommitCertificate.signed_by(block, [signer], CHAIN_ID)
    return {
        "signed-Vote": votes[0].encode(),
        "signed-Proposal": proposals[0].encode(),
        "signed-DuplicateVote": evidence.duplicate_vote(*votes).encode(),
        "signed-DuplicateProposal": evidence.duplicate_proposal(*proposals).encode(),
        "signed-Block": block.encode(),
        "signed-SyncBlock": wire.SyncBlock(block, certificate).encode(),
        "signed-ProposalMessage": wire.ProposalMessage(proposals[0], block).encode(),
    }


# --- the targets' seeds ----------------------------------------------------------------------


def codec_seeds() -> Seeds:
    golden = _golden()
    seeds = {f"golden-{name}": golden[name][0] for name in ("Ping", "Vote", "Header", "TxBatch")}
    return seeds | _MSGPACK_EDGES


def message_seeds() -> Seeds:
    return kind_seeds(every_kind()) | _edges_of(_golden()["Vote"][0]) | {
        "edge-empty": b"", "edge-empty-array": b"\x90"}


def tx_seeds() -> Seeds:
    return kind_seeds(TX_CLASSES) | _edges_of(_golden()["ConsentRevoke"][0])


def gossip_seeds() -> Seeds:
    signed = _signed_seeds()
    return kind_seeds((*wire.GOSSIP_CLASSES, wire.Hello)) | {
        name: data for name, data in signed.items()
        if name in ("signed-Vote", "signed-DuplicateVote", "signed-ProposalMessage")
    } | _edges_of(_golden()["Ping"][0])


def sync_seeds() -> Seeds:
    return kind_seeds((wire.SyncRequest, wire.SyncBlock, statesync.StateSyncRequest,
                       *statesync.STATESYNC_ANSWERS), golden_per_kind=2) | {
        "signed-SyncBlock": _signed_seeds()["signed-SyncBlock"]} | _edges_of(
        _golden()["SyncRequest"][0])


def blob_seeds() -> Seeds:
    hashes = [bytes([n]) * 32 for n in (3, 1, 2)]
    return kind_seeds((wire.BlobRequest, wire.BlobItem), golden_per_kind=3) | {
        "edge-hashes-unsorted": codec.pack([wire.BlobRequest.KIND, 1, hashes]),
        "edge-hash-twice": codec.pack([wire.BlobRequest.KIND, 1, [hashes[0], hashes[0]]]),
        "edge-empty-ciphertext": codec.pack([wire.BlobItem.KIND, 1, hashes[0], b""]),
    } | _edges_of(_golden()["BlobItem"][0])


def client_seeds() -> Seeds:
    return kind_seeds((*client.REQUEST_CLASSES, *client.RESPONSE_CLASSES)) | _edges_of(
        _golden()["FetchRequest"][0])


def consensus_seeds() -> Seeds:
    signed = _signed_seeds()
    return kind_seeds((blocks.Block, blocks.Vote, blocks.Proposal, blocks.DuplicateVote,
                       blocks.DuplicateProposal)) | {
        name: data for name, data in signed.items()
        if name not in ("signed-SyncBlock", "signed-ProposalMessage")
    } | _edges_of(_golden()["Vote"][0])


def genesis_seeds() -> Seeds:
    made = make_genesis()
    document = made.to_json()
    return {
        "valid-4-authorities": genesis.genesis_text(made).encode(),
        "valid-1-authority-no-emergency": genesis.genesis_text(
            make_genesis(1, emergency=False)).encode(),
        "valid-rules-2": genesis.genesis_text(make_genesis(2, rules=2)).encode(),
        "valid-compact": json.dumps(document, separators=(",", ":")).encode(),
        "edge-format-1": _text(document | {"format": 1}),
        "edge-format-newer": _text(document | {"format": 99}),
        "edge-no-format": _text({k: v for k, v in document.items() if k != "format"}),
        "valid-draft-no-authority": genesis.genesis_text(
            genesis.GenesisDraft.new(CHAIN_ID, 1_700_000_000_000)).encode(),
        "edge-draft-with-emergency": _text(document | {"authorities": []}),
        "edge-unknown-param": _text(document | {"params": document["params"] | {"x": 1}}),
        "edge-unknown-top-level": _text(
            {k: v for k, v in document.items() if k != "emergency"}
            | {"emergncy": document["emergency"]}),
        "edge-unknown-in-authority": _text(document | {"authorities": [
            document["authorities"][0] | {"nmae": "node0"}, *document["authorities"][1:]]}),
        "edge-unknown-in-emergency": _text(document | {
            "emergency": document["emergency"] | {"treshold": 3}}),
        "edge-unknown-in-commitment": _text(document | {"emergency": document["emergency"] | {
            "commitments": [document["emergency"]["commitments"][0] | {"indx": 1},
                            *document["emergency"]["commitments"][1:]]}}),
        "edge-missing-param": _text(document | {"params": {"block_txs_max": 1}}),
        "edge-bad-hex": _text(document | {"authorities": [{"name": "a", "public_key": "zz"}]}),
        "edge-duplicate-name": _text(document | {"authorities": [
            document["authorities"][0] | {"public_key": "22" * 32},
            document["authorities"][0]]}),
        "edge-chain-id-upper": _text(document | {"chain_id": "Fuzz"}),
        "edge-threshold-too-high": _text(document | {
            "emergency": document["emergency"] | {"threshold": 9}}),
        "edge-not-a-point": _text(document | {
            "emergency": document["emergency"] | {"public_key": "ff" * 32}}),
        "edge-array": b"[]",
        "edge-not-json": b"{chain_id",
        "edge-not-utf8": b"\xff\xfe{}",
        "edge-empty": b"",
    }


def store_seeds() -> Seeds:
    state_classes = tuple(cls for cls in every_kind()
                          if cls.__module__ in ("healthnode.protocol.state",
                                                "healthnode.consensus.safety"))
    leaf = smt.Leaf(b"\x01" * 32, b"\x02" * 32)
    internal = smt.Internal({0: smt.Ref(b"\x03" * 32, 7, True),
                             15: smt.Ref(b"\x04" * 32, 9, False)})
    return kind_seeds(state_classes) | {
        "tree-leaf": leaf.encode(),
        "tree-internal": internal.encode(),
        "tree-internal-one-child": smt.Internal({3: smt.Ref(b"\x05" * 32, 1, False)}).encode(),
        "edge-tree-internal-short": internal.encode()[:-1],
        "restore-mark-held": RestoreMark(10, 1_700_000_000_000, None).encode(),
        "restore-mark-through": RestoreMark(10, 1_700_000_000_000, 42).encode(),
        "edge-restore-mark-list": b'[1, 2, 3]',
        "edge-restore-mark-float": b'{"backup_height": 1.5, "restored_ms": 1, '
                                   b'"hold_through_height": null}',
        "act-line": ActLine(b"\x06" * 32, b"\x07" * 32, 4, 12, 1_700_000_000_000).encode(),
        "edge-act-line-short": ActLine(b"\x06" * 32, b"\x07" * 32, 4, 12, 5).encode()[:-1],
        "act-count": act_count_encode(3),
    }


def frames_seeds() -> Seeds:
    golden = _golden()
    payloads = [golden["Ping"][0], golden["Vote"][0], golden["SyncRequest"][0], b""]
    seeds: Seeds = {}
    for index, limit in enumerate(FRAME_LIMITS):
        fitting = [p for p in payloads if len(p) <= limit]
        stream = b"".join(encode_frame(p, limit) for p in fitting)
        seeds[f"frames-limit-{limit}-whole"] = bytes([index, 0]) + stream
        seeds[f"frames-limit-{limit}-in-reads"] = bytes([index, 7]) + stream + b"\x05ab"
    vote = golden["Vote"][0]
    return seeds | {
        "edge-length-not-minimal": bytes([3, 1]) + b"\x81\x00" + b"x",
        "edge-length-of-11-bytes": bytes([9, 1]) + b"\xff" * 10 + b"\x01",
        "edge-length-over-limit": bytes([4, 2]) + b"\x41" + b"x" * 65,
        "edge-length-at-limit": bytes([4, 2]) + b"\x40" + b"x" * 64,
        "edge-two-byte-length": bytes([7, 3]) + encode_frame(vote * 2, 16_384),
        "edge-header-only": bytes([8, 5]) + b"\x80\x80\x01",
    }


def _line(method: str, params: dict[str, Any] | None = None, request_id: Any = 1) -> bytes:
    document: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        document["params"] = params
    return json.dumps(document).encode()


def admin_rpc_seeds() -> Seeds:
    key, tx_hash = "ab" * 32, "CD" * 32
    return {
        "status": _line("status"),
        "check-ints": _line("check", {"height": 5, "limit": 2**63 - 1, "round": -1}),
        "check-hex": _line("check", {"subject": key, "tx_hash": tx_hash}),
        "check-text": _line("check", {"dir": "/var/backups/b1", "name": "St. Mary's"}),
        "check-choice": _line("check", {"action": "add", "roles": ["lab", "clinician"]}),
        "check-none": _line("check", {}, "an id"),
        "submit-txs": _line("submit_txs", {"txs": [_golden()["ConsentRevoke"][0].hex()],
                                           "wait": True}),
        "edge-no-params": _line("check", None, None),
        "edge-bool-as-int": _line("check", {"height": True}),
        "edge-float": _line("check", {"height": 1.0}),
        "edge-int-21-digits": b'{"jsonrpc":"2.0","id":1,"method":"check","params":'
                              b'{"height":100000000000000000000}}',
        "edge-nul": _line("check", {"dir": "a\u0000b"}),
        "edge-lone-surrogate": b'{"jsonrpc":"2.0","id":1,"method":"check","params":'
                               b'{"name":"\\ud800"}}',
        "edge-control-char": _line("check", {"name": "a\u0007"}),
        "edge-deep": b'{"jsonrpc":"2.0","id":1,"method":"check","params":{"x":'
                     + b"[" * (rpc.DEPTH_MAX + 1) + b"]" * (rpc.DEPTH_MAX + 1) + b"}}",
        "edge-brackets-in-string": _line("check", {"x": "[[[[{{{{"}),
        "edge-escaped-quote": b'{"jsonrpc":"2.0","id":"\\"[","method":"check"}',
        "edge-params-list": b'{"jsonrpc":"2.0","id":1,"method":"check","params":[1]}',
        "edge-batch": b"[" + _line("status") + b"]",
        "edge-id-object": b'{"jsonrpc":"2.0","id":{},"method":"check"}',
        "edge-no-version": b'{"id":1,"method":"check"}',
        "edge-not-utf8": b'{"jsonrpc":"2.0","id":1,"method":"\xff"}',
        "edge-nan": b'{"jsonrpc":"2.0","id":NaN,"method":"check","params":{"height":NaN}}',
        "edge-empty": b"",
    }


def admin_socket_seeds() -> Seeds:
    lines = [_line("check", {"height": 1}), _line("status", None, 2), b"not json"]
    return {
        "one-line": b"\x00" + lines[0] + b"\n",
        "lines-in-reads": b"\x05" + b"\n".join(lines) + b"\n",
        "blank-lines": b"\x03" + b"\n \n" + lines[0] + b"\r\n\n",
        "unfinished-last-line": b"\x02" + lines[0] + b"\n" + lines[1],
        "edge-only-newlines": b"\x01\n\n\n",
        "edge-empty": b"\x00",
    }


def config_seeds() -> Seeds:
    peer = crypto.peer_id(identity(2).public_key)
    testnet = NodeConfig(p2p=P2PSection(
        listen=("/ip4/0.0.0.0/tcp/26600",),
        peers=(f"/ip4/127.0.0.1/tcp/26601/p2p/{peer}", f"/dns4/node2/tcp/26600/p2p/{peer}"),
        observers=(peer,)))
    default = NodeConfig().to_toml()
    return {
        "default": default.encode(),
        "testnet": testnet.to_toml().encode(),
        "empty": b"",
        "version-only": b"config_version = 1\n",
        "one-of-each-section": b'[node]\nname = "St. Mary"\n[metrics]\nenabled = false\n'
                               b'listen = "[::1]:9100"\n[log]\nlevel = "debug"\n'
                               b'format = "json"\n[mempool]\ntxs_max = 10\n'
                               b'[admin]\nsocket = "run/admin.sock"\n',
        "edge-newer-version": b"config_version = 2\n",
        "edge-unknown-key": b"[p2p]\npeers_maxx = 5\n",
        "edge-wrong-type": b'[p2p]\npeers_max = "ten"\n',
        "edge-out-of-range": b"[p2p]\npeers_max = 0\n",
        "edge-not-multiaddr": b'[p2p]\nlisten = ["/ip4/1.2.3/tcp/1"]\n',
        "edge-peer-without-id": b'[p2p]\npeers = ["/ip4/127.0.0.1/tcp/1"]\n',
        "edge-path-outside": b'[node]\ndata_dir = "../data"\n',
        "edge-host-port": b'[metrics]\nlisten = "localhost:99999"\n',
        "edge-inline-table": b"node = { name = 1 }\n",
        "edge-datetime": b"[node]\nname = 1979-05-27T07:32:00Z\n",
        "edge-not-toml": b"[node\n",
        "edge-not-utf8": b'[node]\nname = "\xff"\n',
    }


def _sealed_key(kind: str, who: crypto.Identity) -> dict[str, Any]:
    """A key file sealed under FUZZ_PASSPHRASE with the least work argon2id allows, so the
    target can open it at every run (a real one asks for 64 MiB)."""
    salt = bytes(nacl.pwhash.argon2id.SALTBYTES)
    opslimit, memlimit = 1, 8192
    box = nacl.secret.SecretBox(nacl.pwhash.argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE, FUZZ_PASSPHRASE.encode(), salt,
        opslimit=opslimit, memlimit=memlimit))
    return {"format": keys.FORMAT_VERSION, "kind": kind, "public_key": who.public_key.hex(),
            "encryption": {"kdf": "argon2id", "opslimit": opslimit, "memlimit": memlimit,
                           "salt": salt.hex(), "cipher": "xsalsa20poly1305",
                           "ciphertext": bytes(box.encrypt(who.seed, bytes(24))).hex()}}


def keys_seeds() -> Seeds:
    who = identity(3)
    clear = keys.encode_key_file("node", who, None)
    public = keys.encode_public_key_file(who.public_key)
    sealed = _sealed_key("patient", who)
    return {
        "node-clear": clear,
        "node-public-only": public,
        "node-sealed": _text(_sealed_key("node", who)),
        "patient-sealed": _text(sealed),
        "env-file": b"# the node key\nOTHER=1\nHEALTHNODE_NODE_KEY="
                    + base64.b64encode(clear) + b"\n",
        "env-file-quoted": b"HEALTHNODE_NODE_KEY='" + base64.b64encode(public) + b"'\n",
        "emergency-share": keys.encode_emergency_share(2, 123456789),
        "edge-seed-and-sealed": _text(json.loads(clear) | {"encryption": sealed["encryption"]}),
        "edge-wrong-seed": _text(json.loads(clear) | {"seed": "00" * 32}),
        "edge-costly-kdf": _text(sealed | {"encryption": sealed["encryption"] | {
            "opslimit": 4, "memlimit": 1 << 30}}),
        "edge-kdf-out-of-range": _text(sealed | {"encryption": sealed["encryption"] | {
            "memlimit": 1024}}),
        "edge-short-ciphertext": _text(sealed | {"encryption": sealed["encryption"] | {
            "ciphertext": "00"}}),
        "edge-unknown-kind": _text(json.loads(clear) | {"kind": "robot"}),
        "edge-format-2": _text(json.loads(clear) | {"format": 2}),
        "edge-env-not-base64": b"HEALTHNODE_NODE_KEY=%%%\n",
        "edge-env-bad-line": b"export HEALTHNODE_NODE_KEY\n",
        "edge-share-index-0": keys.encode_emergency_share(0, 1),
        "edge-not-json": b"{",
        "edge-empty": b"",
    }


def backup_seeds() -> Seeds:
    manifest = BackupManifest("fuzz-chain", b"\x01" * 32, 42, b"\x02" * 32, 1_700_000_000_000,
                              identity(1).public_key, 1234).to_json()
    return {
        "manifest": _text(manifest),
        "manifest-compact": json.dumps(manifest, separators=(",", ":")).encode(),
        "edge-format-2": _text(manifest | {"format": 2}),
        "edge-negative-height": _text(manifest | {"height": -1}),
        "edge-height-bool": _text(manifest | {"height": True}),
        "edge-short-hash": _text(manifest | {"head_hash": "02" * 31}),
        "edge-missing-field": _text({k: v for k, v in manifest.items() if k != "keys"}),
        "edge-array": b"[]",
        "edge-not-json": b"{\"format\": 1,",
        "edge-empty": b"",
    }


def pin_seeds() -> Seeds:
    made = make_genesis(2)
    pin = trust.Pin.of(made, None)
    document = trust.pin_json(pin)
    later = trust.pin_json(trust.Pin(made, light.TrustedHead(
        made.chain_id, made.hash, 9, b"\x07" * 32, 1_700_000_001_000, b"\x08" * 32,
        made.authority_keys, made.authority_keys), None, 5,
        trust.Pending(3, b"\x09" * 32, 1_700_000_000_500), 2))
    return {
        "pin-at-genesis": _text(document),
        "pin-moved-up-with-pending": _text(later),
        "edge-other-genesis-hash": _text(document | {"genesis_hash": "00" * 32}),
        "edge-authority-twice": _text(later | {"trusted": later["trusted"] | {
            "authorities": [later["trusted"]["authorities"][0]] * 2}}),
        "edge-negative-floor": _text(document | {"floor": -1}),
        "edge-pending-not-object": _text(document | {"pending": [1]}),
        "edge-format-2": _text(document | {"format": 2}),
        "edge-not-json": b"{",
        "edge-empty": b"",
    }


def fhir_seeds() -> Seeds:
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female",
               "birthDate": "1971-07-13", "name": [{"family": "Doe", "given": ["Jane"]}]}
    observation = {"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                   "valueQuantity": {"value": 72, "unit": "/min"}}
    return {
        "patient": _text(patient),
        "observation": _text(observation),
        "bundle": _text({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:1", "resource": patient,
             "request": {"method": "POST", "url": "Patient"}}]}),
        "edge-observation-without-code": _text({"resourceType": "Observation",
                                                "status": "final"}),
        "edge-unknown-resource": _text({"resourceType": "Spaceship"}),
        "edge-bad-date": _text(patient | {"birthDate": "1971-13-45"}),
        "edge-resource-type-not-text": _text({"resourceType": 5}),
        "edge-plain-json": _text({"a": 1}),
        "edge-pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n",
        "edge-empty": b"",
    }


SEEDS: Final[dict[str, Callable[[], Seeds]]] = {
    "codec": codec_seeds, "message": message_seeds, "tx": tx_seeds, "gossip": gossip_seeds,
    "sync": sync_seeds, "blob": blob_seeds, "client": client_seeds,
    "consensus": consensus_seeds, "genesis": genesis_seeds, "store": store_seeds,
    "frames": frames_seeds, "admin_rpc": admin_rpc_seeds, "admin_socket": admin_socket_seeds,
    "config": config_seeds, "keys": keys_seeds, "backup": backup_seeds, "pin": pin_seeds,
    "fhir": fhir_seeds,
}


def corpus_files(target: str) -> Iterator[Path]:
    """The seed files of `target`, in name order."""
    return iter(sorted((CORPUS / target).iterdir()))


def write_corpus(targets: list[str]) -> dict[str, int]:
    """Rewrite `corpus/<target>/` for each of `targets`; the number of seeds each got."""
    written = {}
    for name in targets:
        assert name in TARGETS, name
        directory = CORPUS / name
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        seeds = SEEDS[name]()
        for seed_name, data in seeds.items():
            (directory / seed_name).write_bytes(data)
        written[name] = len(seeds)
    return written
