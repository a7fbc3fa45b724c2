"""The genesis: what every node of one network must agree on before the first block.

It names the chain, the first authorities (hospital name and node public key) and the consensus
parameters. Peer and listen addresses are not in it: they are per node (config.toml), so a hospital
can move without a new genesis. The genesis file is JSON for people; its identity (`hash`) is the
BLAKE2b-256 of its canonical msgpack encoding, so whitespace and key order in the file do not
matter.
"""

from __future__ import annotations

import json
import re
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
#      authority set gets the key through the same rounds (`emergency.reshare` is refused).
# A genesis's `format` is the version its chain starts with; the authorities move a running chain
# to a later one by a vote that names the height (`rules.vote`, ledger/rules/governance.py).
RULES_OLDEST: Final = 2
RULES_NEWEST: Final = 4
GENESIS_FORMAT: Final = RULES_NEWEST  # what a new genesis gets
ROUNDS_FROM: Final = 4  # the version that brought the emergency key's rounds
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
        return {
            "format": self.format,
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "authorities": [
                {"name": a.name, "public_key": a.public_key.hex()} for a in self.authorities
            ],
            "params": {name: getattr(self.params, name) for name, _ in ConsensusParams.WIRE_FIELDS},
            "emergency": None if self.emergency is None else {
                "public_key": self.emergency.public_key.hex(),
                "threshold": self.emergency.threshold,
                "commitments": [{"authority": c.authority.hex(), "index": c.index,
                                 "commitment": c.commitment.hex()}
                                for c in self.emergency.commitments],
            },
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "genesis") -> Genesis:
        """Build and check a genesis from its JSON form; errors name `source` and the field."""
        if not isinstance(data, dict):
            raise GenesisError(f"{source}: not a JSON object")
        chain_format = data.get("format", 1)
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
        try:
            params_json = data["params"]
            params = ConsensusParams(**{
                name: params_json[name] for name, _ in ConsensusParams.WIRE_FIELDS
            })
            unknown = set(params_json) - {name for name, _ in ConsensusParams.WIRE_FIELDS}
            if unknown:
                raise GenesisError(f"{source}: unknown params {sorted(unknown)}")
            genesis = cls(
                chain_id=data["chain_id"],
                genesis_time_ms=data["genesis_time_ms"],
                authorities=tuple(
                    Authority(name=a["name"], public_key=bytes.fromhex(a["public_key"]))
                    for a in data["authorities"]
                ),
                params=params,
                emergency=_emergency_from_json(data.get("emergency")),
                format=chain_format,
            )
            # Round trip through the codec: the same checks as bytes from a peer.
            checked = decode_message(genesis.encode(), Genesis, limits.GENESIS_BYTES_MAX)
        except GenesisError:
            raise
        except KeyError as error:
            raise GenesisError(f"{source}: missing field {error}") from None
        except (TypeError, ValueError, AttributeError) as error:
            # CodecError is a ValueError: its message names the field that failed.
            detail = str(error) if isinstance(error, CodecError) else f"malformed ({error})"
            raise GenesisError(f"{source}: {detail}") from None
        checked.validate()
        return checked


def _emergency_from_json(data: Any) -> EmergencyKey | None:
    if data is None:
        return None
    return EmergencyKey(
        public_key=bytes.fromhex(data["public_key"]),
        threshold=data["threshold"],
        commitments=tuple(
            ShareCommitment(authority=bytes.fromhex(c["authority"]), index=c["index"],
                            commitment=bytes.fromhex(c["commitment"]))
            for c in data["commitments"]),
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
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise GenesisError(f"{source}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise GenesisError(f"{source}: not JSON ({error.msg} at line {error.lineno})") from None
    except (ValueError, RecursionError):  # what json lets through from int() and its recursion
        raise GenesisError(f"{source}: a number of more than 4300 digits, or arrays or objects "
                           f"nested too deep") from None
    return Genesis.from_json(data, source=source)


def genesis_text(genesis: Genesis) -> str:
    """The genesis file's text (what `config.write_genesis` writes)."""
    return json.dumps(genesis.to_json(), indent=2) + "\n"
