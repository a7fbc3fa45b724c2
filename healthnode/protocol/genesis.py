"""The genesis: what every node of one network must agree on before the first block.

It names the chain, the first authorities (hospital name and node public key) and the consensus
parameters. Peer and listen addresses are not in it: they are per node (config.toml), so a hospital
can move without a new genesis. The genesis file is JSON for people; its identity (`hash`) is the
BLAKE2b-256 of its canonical msgpack encoding, so whitespace and key order in the file do not
matter.

The file is read strictly: every key at every level (the top, `params`, each authority,
`emergency` and each of its commitments) must be one the genesis has. A misspelled key would
otherwise be dropped without a word, and the network made from the file would lack what its
founders wrote (an `emergncy` key read as "no break-glass on this network"); so it is a
`GenesisError` naming the key and where it is (`genesis.json: unknown key 'emergncy' (top
level)`).

A network of hospitals is founded from a **draft** (`GenesisDraft`, `healthnode genesis new` and
`add-authority`): the same file, which may hold no authority yet. The `Genesis` message must hold
at least one, and neither its fields nor its encoding may change (every running network is named
by the hash of that encoding), so the draft is not a message: it is the file's fields, checked by
the same codec as the genesis they would make (with one stand-in authority while there is none),
and it becomes a `Genesis` only once it has an authority. `genesis_from_bytes`, which every node
command reads a genesis with, refuses a draft with no authority, saying how to finish it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Final

from msgspec import Meta

from healthnode import limits
from healthnode.codec import CodecError
from healthnode.crypto import digest, threshold
from healthnode.errors import GenesisError
from healthnode.protocol.fields import Bytes32, ChainId, Name, PublicKey, TimeMs
from healthnode.protocol.schema import Message, Struct, decode_message

# The versions of the ledger rules that this release carries (docs/ledger.md, "Rules versions"):
#   1  emergency wraps not bound to their records: made before, refused;
#   2  emergency wraps bound to their records (TDH2, docs/break-glass.md);
#   3  erasing a record also deletes its emergency wrap from the state; `record.purged`; record
#      sizes are padded lengths (protocol/padding.py); each signer's daily budget of grants and
#      emergency policies (ledger/rules/budgets.py);
#   4  the emergency key's rounds (ledger/rules/rounds.py): a network without an emergency key
#      generates one among its authorities (no dealer), holders refresh their shares, and a new
#      authority set gets the key through the same rounds (`emergency.reshare` is refused); and a
#      hospital replaces its node key (`node.rotate`, ledger/rules/rotation.py), after which the
#      old key signs nothing more.
#   5  representatives (ledger/rules/representatives.py): a patient appoints a key to act for it
#      within a scope until a date (`representative.appoint`, `representative.end`), and the
#      representative grants, revokes, sets the emergency policy (`representative.act`), writes
#      records and reads as the scope says; every act is in the patient's audit. And grants
#      name the purposes they allow (`consent.grant_purposes`), a read for another purpose
#      is refused, and a patient revokes every grant to one provider at once
#      (`consent.revoke_provider`; ledger/rules/consent.py).
# A genesis's `format` is the version its chain starts with; the authorities move a running chain
# to a later one by a vote that names the height (`rules.vote`, ledger/rules/governance.py).
RULES_OLDEST: Final = 2
RULES_NEWEST: Final = 5
GENESIS_FORMAT: Final = RULES_NEWEST  # what a new genesis gets
ROUNDS_FROM: Final = 4  # the version that brought the emergency key's rounds
REPRESENTATIVES_FROM: Final = 5  # the version that brought representatives
PURPOSES_FROM: Final = 5  # the version that brought grants' purposes and revoke by provider
CHAIN_ID_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
Millis = Annotated[int, Meta(ge=1, le=24 * 3600 * 1000)]


class Authority(Struct):
    name: Name
    public_key: PublicKey


class ShareCommitment(Struct):
    """The public commitment `s_i·B` of authority `authority`'s emergency key share `s_i`
    (share index `index`, 1-based), against which its decryption shares are checked."""

    authority: PublicKey
    index: Annotated[int, Meta(ge=1, le=limits.AUTHORITIES_MAX)]
    commitment: Bytes32


class EmergencyKey(Struct):
    """The network's break-glass key `E = s·B`: `s` exists only as shares held by authorities,
    `threshold` of which open an emergency wrap (docs/break-glass.md)."""

    public_key: Bytes32
    threshold: Annotated[int, Meta(ge=1, le=limits.AUTHORITIES_MAX)]
    commitments: Annotated[
        tuple[ShareCommitment, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX)
    ]


class ConsensusParams(Message, tag=31):
    """Timeouts and block bounds of the BFT round (docs/consensus.md explains each)."""

    propose_timeout_ms: Millis
    prevote_timeout_ms: Millis
    precommit_timeout_ms: Millis
    timeout_increase_ms: Millis  # added per round
    round_timeout_cap_ms: Millis  # timeouts stop growing here, so recovery has a bound
    empty_block_interval_ms: Millis  # heartbeat block when there are no transactions
    block_time_ahead_ms_max: Millis  # how far ahead of a validator's clock a block time may be
    block_txs_max: Annotated[int, Meta(ge=1, le=limits.BLOCK_TXS_MAX)]
    block_bytes_max: Annotated[int, Meta(ge=1024, le=limits.BLOCK_BYTES_MAX)]


DEFAULT_PARAMS: Final = ConsensusParams(
    propose_timeout_ms=1000,
    prevote_timeout_ms=500,
    precommit_timeout_ms=500,
    timeout_increase_ms=500,
    round_timeout_cap_ms=10_000,
    empty_block_interval_ms=5000,
    block_time_ahead_ms_max=2000,
    block_txs_max=limits.BLOCK_TXS_MAX,
    block_bytes_max=limits.BLOCK_BYTES_MAX,
)


class Genesis(Message, tag=30):
    chain_id: ChainId
    genesis_time_ms: TimeMs
    authorities: Annotated[
        tuple[Authority, ...], Meta(min_length=1, max_length=limits.AUTHORITIES_MAX)
    ]
    params: ConsensusParams
    # nil: no break-glass on this network (emergency reads are refused).
    emergency: EmergencyKey | None = None
    # The rules version the chain starts with (RULES_OLDEST..RULES_NEWEST, above).
    format: Annotated[int, Meta(ge=RULES_OLDEST, le=RULES_NEWEST)] = GENESIS_FORMAT

    @property
    def hash(self) -> bytes:
        return digest(self.encode())

    @property
    def authority_keys(self) -> tuple[bytes, ...]:
        return tuple(a.public_key for a in self.authorities)

    def validate(self) -> None:
        """Rules beyond the schema: a usable chain id, no duplicate authority or name."""
        if not CHAIN_ID_PATTERN.match(self.chain_id):
            raise GenesisError(
                f"chain_id {self.chain_id!r} must be lowercase letters, digits and '-'"
            )
        keys = [a.public_key for a in self.authorities]
        if len(set(keys)) != len(keys):
            raise GenesisError("an authority public key appears twice")
        names = [a.name for a in self.authorities]
        if len(set(names)) != len(names):
            raise GenesisError("an authority name appears twice")
        if self.emergency is not None:
            check_emergency_key(self.emergency, keys)

    def to_json(self) -> dict[str, Any]:
        return GenesisDraft.of(self).to_json()

    @classmethod
    def from_json(cls, data: Any, source: str = "genesis") -> Genesis:
        """Build and check a genesis from its JSON form; errors name `source` and the field. A
        draft without authorities is refused (module docstring)."""
        return GenesisDraft.unchecked_from_json(data, source).genesis(source)


# The stand-in authority of a draft that has none yet, so that its other fields are checked by
# the codec as a genesis's are (GenesisDraft.check). It is never written anywhere.
_STAND_IN: Final = Authority(name="stand-in", public_key=bytes(32))

# The keys of the genesis file at each level (module docstring: the file is read strictly).
_TOP_KEYS: Final = ("format", "chain_id", "genesis_time_ms", "authorities", "params", "emergency")
_AUTHORITY_KEYS: Final = ("name", "public_key")
_EMERGENCY_KEYS: Final = ("public_key", "threshold", "commitments")
_COMMITMENT_KEYS: Final = ("authority", "index", "commitment")
_PARAMS_KEYS: Final = tuple(name for name, _ in ConsensusParams.WIRE_FIELDS)


@dataclass(frozen=True, slots=True)
class GenesisDraft:
    """A genesis file's fields, with any number of authorities, zero included: what the founder
    of a network builds one hospital at a time (`healthnode genesis new`, `add-authority`) and
    what every genesis file is read as before it becomes a `Genesis` (`genesis`). Each draft made
    here is checked (`check`): it is a genesis but for its missing authorities."""

    chain_id: str
    genesis_time_ms: int
    authorities: tuple[Authority, ...]
    params: ConsensusParams
    emergency: EmergencyKey | None
    format: int

    @classmethod
    def of(cls, genesis: Genesis) -> GenesisDraft:
        return cls(genesis.chain_id, genesis.genesis_time_ms, genesis.authorities,
                   genesis.params, genesis.emergency, genesis.format)

    @classmethod
    def new(cls, chain_id: str, genesis_time_ms: int, rules_version: int = GENESIS_FORMAT,
            source: str = "genesis") -> GenesisDraft:
        """A draft with the default consensus parameters, no authority and no emergency key: a
        network founded by its hospitals makes its break-glass key on chain, after its start,
        so that no machine ever holds the whole key (docs/break-glass.md)."""
        draft = cls(chain_id, genesis_time_ms, (), DEFAULT_PARAMS, None, rules_version)
        draft.check(source)
        return draft

    def with_authority(self, name: str, public_key: bytes, source: str = "genesis"
                       ) -> GenesisDraft:
        """This draft with one more authority; a key or a name already there is refused,
        naming the authority that has it (a hospital sent its key twice, or two hospitals
        chose one name)."""
        for authority in self.authorities:
            if authority.public_key == public_key:
                raise GenesisError(f"{source}: the key {public_key.hex()[:16]} is already "
                                   f"authority {authority.name!r}")
            if authority.name == name:
                raise GenesisError(f"{source}: the name {name!r} is already taken by the "
                                   f"authority of key {authority.public_key.hex()[:16]}")
        draft = GenesisDraft(self.chain_id, self.genesis_time_ms,
                             (*self.authorities, Authority(name=name, public_key=public_key)),
                             self.params, self.emergency, self.format)
        draft.check(source)
        return draft

    def check(self, source: str = "genesis") -> Genesis:
        """Every check of a genesis (the codec's, as for bytes from a peer, then `validate`),
        on the genesis this draft makes, or would make with one authority; that genesis, checked
        (with the stand-in when the draft has no authority: only `genesis` hands one out)."""
        if not self.authorities and self.emergency is not None:
            # Its shares' holders must be authorities, which the stand-in must not pass for.
            raise GenesisError(f"{source}: emergency: a share holder is not an authority (the "
                               f"draft has no authority yet)")
        candidate = Genesis(
            chain_id=self.chain_id, genesis_time_ms=self.genesis_time_ms,
            authorities=self.authorities or (_STAND_IN,), params=self.params,
            emergency=self.emergency, format=self.format)
        try:
            checked = decode_message(candidate.encode(), Genesis, limits.GENESIS_BYTES_MAX)
            checked.validate()
        except GenesisError as error:
            raise GenesisError(f"{source}: {error}") from None
        except CodecError as error:  # its message names the field that failed
            raise GenesisError(f"{source}: {error}") from None
        return checked

    def genesis(self, source: str = "genesis") -> Genesis:
        """The genesis of a finished draft; a draft with no authority yet is refused, saying
        what is missing and how to add it."""
        if not self.authorities:
            raise GenesisError(
                f"{source}: a genesis draft with no authority yet, which no node can run: add "
                f"each founding hospital's node key with `healthnode genesis add-authority` "
                f"(docs/operations.md, 'Founding a network')")
        return self.check(source)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "authorities": [
                {"name": a.name, "public_key": a.public_key.hex()} for a in self.authorities
            ],
            "params": {name: getattr(self.params, name) for name in _PARAMS_KEYS},
            "emergency": None if self.emergency is None else {
                "public_key": self.emergency.public_key.hex(),
                "threshold": self.emergency.threshold,
                "commitments": [{"authority": c.authority.hex(), "index": c.index,
                                 "commitment": c.commitment.hex()}
                                for c in self.emergency.commitments],
            },
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "genesis") -> GenesisDraft:
        """Build and check a draft from a genesis file's JSON form (no authority is needed);
        errors name `source`, and the key or field and where it is."""
        draft = cls.unchecked_from_json(data, source)
        draft.check(source)
        return draft

    @classmethod
    def unchecked_from_json(cls, data: Any, source: str) -> GenesisDraft:
        """`from_json` but for `check`: the file's layout only (every key known, none missing),
        for a caller that checks the draft itself (`Genesis.from_json`, through `genesis`)."""
        top = _object(data, _TOP_KEYS, "top level", source)
        chain_format = top.get("format", 1)
        if chain_format == 1:
            raise GenesisError(
                f"{source}: format 1, and this healthnode runs chains of formats {RULES_OLDEST} to "
                f"{RULES_NEWEST}. Format 1 chains were made before emergency wraps were bound "
                f"to their records, and their wraps can be misused; no hospital runs one. Make "
                f"a new network (docs/break-glass.md, 'Chains made before').")
        if isinstance(chain_format, int) and chain_format > RULES_NEWEST:
            raise GenesisError(
                f"{source}: format {chain_format}: its chain starts with rules version "
                f"{chain_format}, and this release carries versions {RULES_OLDEST} to "
                f"{RULES_NEWEST}. Install a release that carries it (docs/operations.md, "
                f"'Rules upgrades').")
        params_json = _object(_field(top, "params", "top level", source), _PARAMS_KEYS,
                              "params", source)
        # A Struct's constructor checks no type or limit: `check` has the codec check them
        # all, naming the field that fails.
        return cls(
            chain_id=_field(top, "chain_id", "top level", source),
            genesis_time_ms=_field(top, "genesis_time_ms", "top level", source),
            authorities=tuple(
                _authority_from_json(item, f"authorities[{index}]", source)
                for index, item in enumerate(_array(
                    _field(top, "authorities", "top level", source), "authorities", source))),
            params=ConsensusParams(**{
                name: _field(params_json, name, "params", source) for name in _PARAMS_KEYS}),
            emergency=_emergency_from_json(top.get("emergency"), source),
            format=chain_format,
        )


def _object(value: Any, keys: tuple[str, ...], where: str, source: str) -> dict[str, Any]:
    """`value` as a JSON object of no key but `keys`; GenesisError naming an unknown key and
    where it is."""
    if not isinstance(value, dict):
        raise GenesisError(f"{source}: not a JSON object" if where == "top level"
                           else f"{source}: {where}: not a JSON object")
    unknown = sorted(key for key in value if key not in keys)
    if unknown:
        more = f", and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise GenesisError(f"{source}: unknown key {unknown[0][:80]!r} ({where}){more}; the "
                           f"keys here are {', '.join(keys)}")
    return value


def _array(value: Any, where: str, source: str) -> list[Any]:
    if not isinstance(value, list):
        raise GenesisError(f"{source}: {where}: not a JSON array")
    return value


def _field(document: dict[str, Any], key: str, where: str, source: str) -> Any:
    if key not in document:
        raise GenesisError(f"{source}: missing field {key!r} ({where})")
    return document[key]


def _hex(value: Any, key: str, where: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise GenesisError(f"{source}: {where}.{key}: not a string of hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise GenesisError(f"{source}: {where}.{key}: not hex digits") from None


def _authority_from_json(data: Any, where: str, source: str) -> Authority:
    authority = _object(data, _AUTHORITY_KEYS, where, source)
    return Authority(name=_field(authority, "name", where, source),
                     public_key=_hex(_field(authority, "public_key", where, source),
                                     "public_key", where, source))


def _emergency_from_json(data: Any, source: str) -> EmergencyKey | None:
    if data is None:
        return None
    key = _object(data, _EMERGENCY_KEYS, "emergency", source)
    commitments = []
    for index, item in enumerate(_array(_field(key, "commitments", "emergency", source),
                                        "emergency.commitments", source)):
        where = f"emergency.commitments[{index}]"
        commitment = _object(item, _COMMITMENT_KEYS, where, source)
        commitments.append(ShareCommitment(
            authority=_hex(_field(commitment, "authority", where, source), "authority", where,
                           source),
            index=_field(commitment, "index", where, source),
            commitment=_hex(_field(commitment, "commitment", where, source), "commitment",
                            where, source)))
    return EmergencyKey(
        public_key=_hex(_field(key, "public_key", "emergency", source), "public_key",
                        "emergency", source),
        threshold=_field(key, "threshold", "emergency", source),
        commitments=tuple(commitments),
    )


def check_emergency_key(key: EmergencyKey, authorities: list[bytes] | tuple[bytes, ...]) -> None:
    """Share holders are distinct authorities with distinct indexes, enough for the threshold,
    and every point is a valid group element."""
    holders = [c.authority for c in key.commitments]
    indexes = [c.index for c in key.commitments]
    if len(set(holders)) != len(holders) or len(set(indexes)) != len(indexes):
        raise GenesisError("emergency: a share holder or share index appears twice")
    if any(holder not in authorities for holder in holders):
        raise GenesisError("emergency: a share holder is not an authority")
    if key.threshold > len(holders):
        raise GenesisError(f"emergency: threshold {key.threshold} exceeds the "
                           f"{len(holders)} share holders")
    try:
        threshold.check_point(key.public_key, "emergency public key")
        for c in key.commitments:
            threshold.check_point(c.commitment, f"share commitment {c.index}")
    except threshold.ThresholdError as error:
        raise GenesisError(f"emergency: {error}") from None


def genesis_from_bytes(raw: bytes, source: str) -> Genesis:
    """A genesis from the bytes of its JSON file (read by `config.load_genesis`); errors name
    `source`."""
    return Genesis.from_json(_json_document(raw, source), source=source)


def _json_document(raw: bytes, source: str) -> Any:
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise GenesisError(f"{source}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise GenesisError(f"{source}: not JSON ({error.msg} at line {error.lineno})") from None
    except (ValueError, RecursionError):  # what json lets through from int() and its recursion
        raise GenesisError(f"{source}: a number of more than 4300 digits, or arrays or objects "
                           f"nested too deep") from None
    return data


def draft_from_bytes(raw: bytes, source: str) -> GenesisDraft:
    """A genesis draft (a genesis file that may hold no authority yet: module docstring) from
    the bytes of its file; errors name `source`."""
    return GenesisDraft.from_json(_json_document(raw, source), source=source)


def genesis_text(genesis: Genesis | GenesisDraft) -> str:
    """The genesis file's text (what `config.write_genesis` writes), of a genesis or a draft."""
    return json.dumps(genesis.to_json(), indent=2) + "\n"
