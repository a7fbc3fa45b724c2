"""What the core is given from outside: the `BlockSource` it asks for authority sets and blocks
(the node shell implements it over ledger and mempool), the last committed block (`Committed`)
and the default signature check (`signature_verifier`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from healthnode.crypto import ZERO_HASH
from healthnode.protocol.block import Block, CommitCertificate, Evidence, Verify
from healthnode.protocol.signed import Signed


@dataclass(frozen=True, slots=True)
class Built:
    """What a source built: the block to propose (None: nothing to propose yet), and what it
    refused on the way. The core never looks into `refused`: it hands it back to the shell in a
    `DropRefused` effect, so that building a block changes nothing outside the core."""

    block: Block | None
    refused: tuple[object, ...] = ()


class BlockSource(Protocol):
    """What the core needs from the ledger and mempool (the node shell implements it)."""

    def authorities(self, height: int) -> tuple[bytes, ...]:
        """The ordered authority public keys that vote at `height`."""
        ...

    def build_block(self, height: int, round_: int, now_ms: int,
                    last_commit: CommitCertificate | None,
                    evidence: tuple[Evidence, ...]) -> Built:
        """A new block to propose (None when there is nothing to propose yet: no transactions
        and the heartbeat is not due), and the transactions refused while building it. Reads
        only: the source changes no mempool and no state."""
        ...

    def check_block(self, block: Block, now_ms: int, certified: bool = False) -> str | None:
        """None when the block's content is valid (transactions, state hash), else why not.
        The answer for one block must not change within a height: the core caches it.
        `certified`: the block came with a verified commit certificate (block sync), so the
        authorities already verified its transactions' signatures; the source may skip that."""
        ...


@dataclass(frozen=True, slots=True)
class Committed:
    """The last committed block as the store holds it (height 0: the genesis)."""

    height: int
    block_hash: bytes
    time_ms: int
    certificate: CommitCertificate | None

    @classmethod
    def genesis(cls, genesis_time_ms: int) -> Committed:
        return cls(0, ZERO_HASH, genesis_time_ms, None)


def signature_verifier(chain_id: str) -> Verify:
    def verify(message: Signed) -> bool:
        return message.signature_valid(chain_id)
    return verify
