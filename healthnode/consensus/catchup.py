"""Messages of other heights, and catching up with peers that are ahead.

The core works on one height. A message of an older height is rejected. One of the next height
comes from a faster peer that already committed this height: it is verified and buffered (a quota
per signer, `FUTURE_MESSAGES_PER_SIGNER`) until this node gets there, and it marks this node as
behind, so REBROADCAST asks for blocks. A message of a farther height cannot be verified here
(this node may not know that height's authorities), so it only makes the core ask for blocks.
Block requests (`RequestBlocks`) go out at most once per `propose_timeout_ms`.
"""

from __future__ import annotations

from typing import Final

from healthnode.consensus.events import Effect, Ignored, RequestBlocks
from healthnode.consensus.source import BlockSource
from healthnode.protocol.block import Block, Proposal, Verify, Vote

# Messages of the next height that arrive before this one commits (faster peers), per signer: a
# correct signer makes at most three per round, and peers do not get far ahead of a node whose
# vote they need. Missed ones come again by REBROADCAST after this node catches up.
FUTURE_MESSAGES_PER_SIGNER: Final = 16


class CatchUp:
    """The next height's buffered messages, whether a later height was seen in this one, and the
    rate limit of block requests."""

    def __init__(self, source: BlockSource, verify: Verify, request_interval_ms: int) -> None:
        self._source = source
        self._verify = verify
        self._request_interval_ms = request_interval_ms
        self._future: dict[Proposal | Vote, Block | None] = {}
        self._future_per_signer: dict[bytes, int] = {}
        self.later_height_seen = False
        self._requested_ms: int | None = None

    def gate(self, message: Proposal | Vote, block: Block | None, height: int, now: int,
             out: list[Effect]) -> bool:
        """True when `message` is of the current `height`; buffers the next height's."""
        if message.height == height:
            return True
        if message.height < height:
            out.append(Ignored("old_height"))
        elif message.height == height + 1:
            # A faster peer already committed this height. Keep its messages (verified, bounded)
            # for when this node catches up; REBROADCAST later asks for blocks if it does not.
            if message.signer not in self._source.authorities(message.height):
                out.append(Ignored("not_authority"))
            elif not self._verify(message):
                out.append(Ignored("bad_signature"))
            else:
                self.later_height_seen = True
                self._buffer(message, block, out)
        else:
            # Unverifiable here (this node may not know that height's authorities): a byzantine
            # peer can make us ask for blocks, which the rate limit keeps cheap.
            out.append(Ignored("far_height"))
            self.request_blocks(height, now, out)
        return False

    def _buffer(self, message: Proposal | Vote, block: Block | None, out: list[Effect]) -> None:
        signer_count = self._future_per_signer.get(message.signer, 0)
        if message in self._future:
            if block is not None:
                self._future[message] = block
        elif signer_count < FUTURE_MESSAGES_PER_SIGNER:
            # A quota per signer: a byzantine flood cannot crowd out correct peers.
            self._future_per_signer[message.signer] = signer_count + 1
            self._future[message] = block
        else:
            out.append(Ignored("future_buffer_full"))

    def new_height(self) -> None:
        """The core moved to the next height: nothing later is known to exist yet."""
        self.later_height_seen = False

    def release(self) -> list[tuple[Proposal | Vote, Block | None]]:
        """Empty the buffer, returning what it held in arrival order (the core is now at the
        height the messages were buffered for, or past it)."""
        held = list(self._future.items())
        self._future, self._future_per_signer = {}, {}
        return held

    def request_blocks(self, height: int, now: int, out: list[Effect]) -> None:
        """Ask peers for committed blocks from `height` on, unless asked recently."""
        last = self._requested_ms
        if last is None or now - last >= self._request_interval_ms:
            self._requested_ms = now
            out.append(RequestBlocks(height))
