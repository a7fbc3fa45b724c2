"""The byzantine authorities of the simulator (`Adversary`), up to f of them: each runs a real
core, but equivocates (two proposals, two votes), votes for unknown block hashes, replays old
messages and sends forged signatures, or stays mute, as its seeded mode says. (With more than f,
the simulator's fork mode keeps them honest-looking towards each half instead.)"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from healthnode.consensus.events import Broadcast
from healthnode.crypto import digest
from healthnode.protocol.block import Block, Vote
from healthnode.protocol.schema import replace
from healthnode.tools.sim.world import CHAIN_ID, Message, SimNode

HISTORY_MAX: Final = 256  # messages a byzantine node remembers to replay or forge from

Send = Callable[[SimNode, SimNode, Any], None]  # (sender, receiver, payload)
Broadcaster = Callable[[SimNode, Any], None]  # (sender, payload) to every other node


class Adversary:
    """What the byzantine nodes send in place of their cores' broadcasts. `modes` (by public
    key: equivocate, chaos or mute) and `rng` are the simulation's own, so a seed replays."""

    def __init__(self, rng: random.Random, nodes: list[SimNode], modes: dict[bytes, str],
                 send: Send, broadcast: Broadcaster) -> None:
        self.rng = rng
        self.nodes = nodes
        self.modes = modes
        self._send = send
        self._broadcast = broadcast
        self.history: deque[tuple[Message, Block | None]] = deque(maxlen=HISTORY_MAX)

    def remember(self, message: Message, block: Block | None) -> None:
        """A message a byzantine node received: something to replay or forge from later."""
        self.history.append((message, block))

    def misbehave(self, node: SimNode, effect: Broadcast) -> None:
        """Carry out a byzantine node's broadcast its own way."""
        rng = self.rng
        mode = self.modes[node.identity.public_key]
        if mode == "mute":
            return
        message, block = effect.message, effect.block
        others = [receiver for receiver in self.nodes if receiver is not node]
        own = message.signer == node.identity.public_key
        if mode == "equivocate" and own and rng.random() < 0.5:
            twin, twin_block = self._conflicting(node, message, block)
            for receiver in others:
                if rng.random() < 0.5:
                    self._send(node, receiver, ("message", message, block))
                else:
                    self._send(node, receiver, ("message", twin, twin_block))
        else:
            self._broadcast(node, ("message", message, block))
        if (mode == "chaos" or rng.random() < 0.2) and own:
            self._chaos(node, message)

    def _conflicting(self, node: SimNode, message: Message,
                     block: Block | None) -> tuple[Message, Block | None]:
        if isinstance(message, Vote):
            # A fixed twin per vote, so a re-sent vote does not mint a new equivocation.
            other = None if message.block_hash is not None else digest(
                b"unknown" + message.encode())
            twin_vote = replace(message, block_hash=other, signature=b"")
            return twin_vote.sign(node.identity, CHAIN_ID), None
        assert block is not None
        header = replace(block.header, time_ms=block.header.time_ms + 1)
        twin_block = Block(header, block.txs, block.evidence)
        twin = replace(message, block_hash=twin_block.hash, pol_round=-1,
                                   signature=b"")
        return twin.sign(node.identity, CHAIN_ID), twin_block

    def _chaos(self, node: SimNode, message: Message) -> None:
        rng = self.rng
        target = rng.choice([receiver for receiver in self.nodes if receiver is not node])
        action = rng.choice(("unknown_vote", "replay", "forge"))
        if action == "unknown_vote":
            unknown = Vote(rng.choice((1, 2)), message.height, message.round,
                           digest(b"never-proposed-%d" % rng.randrange(1 << 30)),
                           node.identity.public_key).sign(node.identity, CHAIN_ID)
            self._send(node, target, ("message", unknown, None))
        elif action == "replay" and self.history:
            old, old_block = rng.choice(self.history)
            self._send(node, target, ("message", old, old_block))
        elif action == "forge" and self.history:
            old, old_block = rng.choice(self.history)
            if isinstance(old, Vote):
                tampered_hash = digest(b"forged" + old.signer)
                forged: Message = replace(old, block_hash=tampered_hash)
            else:
                forged = replace(old, signature=bytes(64))
            self._send(node, target, ("message", forged, old_block))
