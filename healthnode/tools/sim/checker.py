"""The simulator's invariant checker (`Checker`): agreement, validity, finalized heights never
going back (also across restarts), no evidence against a correct authority, and every
equivocation a correct node received detected as evidence. The simulator calls it after every
step of a correct node; liveness, a property of the whole run, is judged in `Simulation.run`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from healthnode.protocol.block import (
    Block,
    CommitCertificate,
    DuplicateProposal,
    DuplicateVote,
    Evidence,
    Proposal,
    VerificationError,
    Vote,
    verify_commit,
)
from healthnode.protocol.evidence import evidence_key, evidence_signer
from healthnode.tools.sim.world import CHAIN_ID, Message, SimNode, Verifier


class Checker:
    """What the correct nodes did, held against the invariants; each breach is a violation,
    stamped with the virtual time `now()`."""

    def __init__(self, authorities: tuple[bytes, ...], byzantine_keys: set[bytes],
                 verify: Verifier, now: Callable[[], int]) -> None:
        self.authorities = authorities
        self.byzantine_keys = byzantine_keys
        self.verify = verify
        self.now = now
        self.violations: list[str] = []
        self.finalized: dict[int, tuple[bytes, int]] = {}
        self.certificates_checked: dict[CommitCertificate, str | None] = {}
        self.equivocations: set[tuple[bytes, int, int, int]] = set()
        self.evidence_committed: set[bytes] = set()

    def violate(self, text: str) -> None:
        self.violations.append(f"t={self.now()}ms {text}")

    def committed(self, node: SimNode, block: Block, certificate: CommitCertificate,
                  proposal: Proposal | None) -> None:
        """A correct node committed `block`: agreement with every other correct node, then
        validity; the evidence it carries is counted as committed."""
        block_hash = block.hash
        earlier = self.finalized.get(block.height)
        if earlier is None:
            self.finalized[block.height] = (block_hash, node.index)
        elif earlier[0] != block_hash:
            self.violate(f"agreement: height {block.height} finalized as "
                         f"{earlier[0].hex()[:12]} by node {earlier[1]} and as "
                         f"{block_hash.hex()[:12]} by node {node.index}")
        self._check_validity(node, block, block_hash, certificate, proposal)
        for item in block.evidence:
            self.evidence_committed.add(evidence_key(item))

    def _check_validity(self, node: SimNode, block: Block, block_hash: bytes,
                        certificate: CommitCertificate, proposal: Proposal | None) -> None:
        if certificate.block_hash != block_hash or certificate.height != block.height:
            self.violate(f"validity: node {node.index} certificate is not for its block")
        reason = self.certificates_checked.get(certificate, "unchecked")
        if reason == "unchecked":
            try:
                verify_commit(certificate, CHAIN_ID, self.authorities)  # the real, slow check
                reason = None
            except VerificationError as error:
                reason = error.reason
            self.certificates_checked[certificate] = reason
        if reason is not None:
            self.violate(f"validity: node {node.index} height {block.height}: {reason}")
        if proposal is not None:
            expected = self.authorities[(block.height + proposal.round) % len(self.authorities)]
            if (proposal.block_hash != block_hash or proposal.signer != expected
                    or not self.verify(proposal)):
                self.violate(f"validity: node {node.index} height {block.height}: the proposal "
                             "is not the round proposer's signed proposal of this block")

    def evidence_found(self, node: SimNode, item: Evidence) -> None:
        """A node's core found evidence of an equivocation: never against a correct authority."""
        signer = evidence_signer(item)
        if signer not in self.byzantine_keys:
            self.violate(f"double sign: node {node.index} found evidence against the correct "
                         f"authority {signer.hex()[:12]}")
        if isinstance(item, DuplicateVote):
            vote = item.vote_a
            slot = (signer, vote.vote_type, vote.height, vote.round)
        else:
            assert isinstance(item, DuplicateProposal)
            slot = (signer, 0, item.proposal_a.height, item.proposal_a.round)
        node.evidence_slots.add(slot)
        self.equivocations.add(slot)

    def track_equivocation(self, node: SimNode, message: Message, block: Block | None) -> None:
        """Record what a correct node received from byzantine signers at its current height,
        mirroring what its core accepts (valid signature, the round's proposer, matching block)."""
        core = node.core
        assert core is not None
        if message.signer not in self.byzantine_keys or message.height != core.height:
            return
        if not self.verify(message):
            return
        if isinstance(message, Vote):
            slot = (message.signer, message.vote_type, message.height, message.round)
            value: Any = message.block_hash
        else:
            if message.signer != core.proposer(message.round):
                return
            if block is not None and block.hash != message.block_hash:
                return
            slot = (message.signer, 0, message.height, message.round)
            value = (message.block_hash, message.pol_round)
        node.received_slots.setdefault(slot, set()).add(value)

    def after_step(self, node: SimNode) -> None:
        """After a step of a correct node: its finalized height, and the equivocations it saw."""
        core = node.core
        if core is None:
            return
        if core.committed.height < node.finalized_max:
            self.violate(f"monotonic: node {node.index} went back to height "
                         f"{core.committed.height} from {node.finalized_max}")
        for slot, values in node.received_slots.items():
            if len(values) > 1 and slot not in node.evidence_slots:
                self.violate(f"evidence: node {node.index} received an equivocation of "
                             f"{slot[0].hex()[:12]} at height {slot[2]} round {slot[3]} "
                             "and found no evidence")
                node.evidence_slots.add(slot)  # report once

    def restarted(self, node: SimNode, height: int) -> None:
        """A node restarted from its disk at `height`: never below what it had finalized."""
        if height < node.finalized_max:
            self.violate(f"monotonic: node {node.index} restarted at height {height} after "
                         f"finalizing {node.finalized_max}")
