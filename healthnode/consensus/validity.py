"""Block validity at the consensus level: what a block of the current height must satisfy before
the core prevotes, locks or commits it (docs/consensus.md, "Block validity"). `block_problem` is
the rule; `BlockValidity` caches its answer per block for one height and adds the one
clock-dependent check (block time ahead of the local clock), which is never cached.
"""
from __future__ import annotations

from healthnode.consensus.source import BlockSource, Committed
from healthnode.protocol import evidence as ev
from healthnode.protocol.block import (
    Block,
    VerificationError,
    Verify,
    certificate_problem,
    header_problem,
    verify_block_shape,
)


def block_problem(block: Block, now: int, *, chain_id: str, height: int, committed: Committed,
                  authorities: tuple[bytes, ...], source: BlockSource, verify: Verify,
                  certified: bool = False) -> str | None:
    """Consensus-level facts about a block of `height` (the one after `committed`), then the
    source's content check. None when valid, else why not."""
    header = block.header
    try:
        verify_block_shape(block, chain_id)
    except VerificationError as error:
        return f"block_shape: {error.reason}"
    wrong = header_problem(header, chain_id=chain_id, height=height,
                           after_time_ms=committed.time_ms,
                           authorities=authorities,
                           prev_hash=committed.block_hash)
    if wrong is not None:
        return wrong[0]
    if header.last_commit is not None:
        uncertified = certificate_problem(
            header.last_commit, source.authorities(height - 1), verify)
        if uncertified is not None:
            return f"block_last_commit: {uncertified[0]}"
    keys: set[bytes] = set()
    for item in block.evidence:
        evidence_height = ev.evidence_height(item)
        if evidence_height > height:
            return "block_evidence_from_the_future"
        problem = ev.check_evidence(item, source.authorities(evidence_height), verify)
        if problem is not None:
            return f"block_{problem.code}"
        key = ev.evidence_key(item)
        if key in keys:
            return "block_evidence_twice"
        keys.add(key)
    return source.check_block(block, now, certified)


class BlockValidity:
    """Which blocks of one height are valid; made anew for each height."""

    def __init__(self, *, chain_id: str, height: int, committed: Committed,
                 authorities: tuple[bytes, ...], source: BlockSource, verify: Verify,
                 time_ahead_ms_max: int) -> None:
        self._chain_id = chain_id
        self._height = height
        self._committed = committed
        self._authorities = authorities
        self._source = source
        self._verify = verify
        self._time_ahead_ms_max = time_ahead_ms_max
        self._problems: dict[bytes, str | None] = {}  # block hash -> why invalid (None: valid)

    def problem(self, block: Block, now: int, certified: bool = False) -> str | None:
        """`block_problem` for this height, not cached (block sync checks a certified block)."""
        return block_problem(block, now, chain_id=self._chain_id, height=self._height,
                             committed=self._committed, authorities=self._authorities,
                             source=self._source, verify=self._verify, certified=certified)

    def valid(self, block: Block, block_hash: bytes, now: int, *, at_commit: bool) -> bool:
        if block_hash not in self._problems:
            self._problems[block_hash] = self.problem(block, now)
        if self._problems[block_hash] is not None:
            return False
        # A block time may be at most block_time_ahead_ms_max ahead of this node's clock. This
        # is the one clock-dependent check, so it is not cached; and a block 2/3+ precommitted
        # is committed whatever this clock says.
        return at_commit or block.header.time_ms <= now + self._time_ahead_ms_max

    def why_invalid(self, block_hash: bytes) -> str | None:
        """The cached reason `block_hash` is invalid (None: valid or not checked)."""
        return self._problems.get(block_hash)
