"""Where the nodes are (rules version 4 on): observers that an authority vouches for, and the
addresses that authorities and observers announce, signed by their node keys.

Theory of operation
-------------------
A node dials the authorities of the next two heights and the observers, each at the addresses
it last announced (`node.announce`), with its config's `peers` only as a seed list
(node/daemon.py); so a new authority, a removed one, a hospital that moved, or an observer
about to join needs no config edit and no restart anywhere.

- **node.observer** (an authority): `add` vouches for an observer, a node that follows the chain
  without voting (a hospital that will join, once it has synced: docs/operations.md, "Joining a
  network"); every authority then lets it in, serves it blocks, and dials it. `remove` ends it.
  One authority suffices, as for a provider: a faulty authority could let a stranger read the
  chain, which it can do anyway with its own copy; but every authority serves and dials each
  observer, so their number is bounded (`OBSERVERS_MAX` in all, `OBSERVERS_PER_SPONSOR_MAX` per
  authority), and an observer is in force only while its sponsor is an authority.
- **node.announce** (an authority of the next two heights, or an observer): the addresses it can
  be dialled at (a host and a TCP port each, without /p2p/: the dialler adds the peer id of the
  key that signed them), replacing its previous announcement, at most once in
  `ANNOUNCE_INTERVAL_BLOCKS` blocks. Anyone may read them: an address is no secret of a hospital.
"""

from __future__ import annotations

from typing import Final

from healthnode import limits
from healthnode.ledger.rules.block_context import BlockContext, authorities
from healthnode.ledger.rules.budgets import BlockTally
from healthnode.ledger.rules.governance import require_authority
from healthnode.ledger.rules.refusals import Reason, Reject
from healthnode.ledger.rules.rounds import ROUNDS_FROM
from healthnode.ledger.state import ADDRESS, OBSERVER, Overlay, StateView, decode_value, read
from healthnode.protocol.state import AddressState, ObserverState
from healthnode.protocol.tx import NodeAnnounce, NodeObserver, peer_address_problem

ANNOUNCE_INTERVAL_BLOCKS: Final = limits.ANNOUNCE_INTERVAL_BLOCKS
OBSERVERS_MAX: Final = limits.OBSERVERS_MAX
OBSERVERS_PER_SPONSOR_MAX: Final = limits.OBSERVERS_PER_SPONSOR_MAX


def observers(view: StateView, height: int) -> dict[bytes, ObserverState]:
    """The observers in force after block `height`, by key: those vouched for by an authority of
    the next two heights (an observer's standing ends with its sponsor's, also a sponsor voted out
    for a stolen key)."""
    return _in_force(view, height, _vouched(view))


def _vouched(view: StateView) -> dict[bytes, ObserverState]:
    """Every observer vouched for and not ended, in force or not."""
    return {key[len(OBSERVER):]: decode_value(raw, ObserverState, key)
            for key, raw in view.scan(OBSERVER)}


def _in_force(view: StateView, height: int, vouched: dict[bytes, ObserverState]
              ) -> dict[bytes, ObserverState]:
    sponsors = set(authorities(view, height + 1)) | set(authorities(view, height + 2))
    return {key: observer for key, observer in vouched.items() if observer.sponsor in sponsors}


def announced(view: StateView, node: bytes) -> AddressState | None:
    return read(view, ADDRESS + node, AddressState)


def _in_rules(now: BlockContext) -> None:
    if now.rules < ROUNDS_FROM:
        raise Reject(Reason.KIND_NOT_IN_RULES,
                     f"observers and announced addresses come with rules version {ROUNDS_FROM}")


def node_observer(state: Overlay, tx: NodeObserver, now: BlockContext,
                  _tally: BlockTally) -> None:
    _in_rules(now)
    require_authority(tx.signer, now)
    current = read(state, OBSERVER + tx.subject, ObserverState)
    if tx.action == "add":
        if current is not None:
            raise Reject(Reason.ALREADY_OBSERVER, "the subject is an observer already")
        if tx.subject in now.authorities or tx.subject in authorities(state, now.height + 2):
            raise Reject(Reason.ALREADY_AUTHORITY, "the subject is an authority")
        vouched = _vouched(state)
        sponsored = sum(1 for observer in vouched.values() if observer.sponsor == tx.signer)
        if len(_in_force(state, now.height - 1, vouched)) >= OBSERVERS_MAX or \
                sponsored >= OBSERVERS_PER_SPONSOR_MAX:
            raise Reject(Reason.OBSERVERS_FULL,
                         f"at most {OBSERVERS_MAX} observers, {OBSERVERS_PER_SPONSOR_MAX} per "
                         f"authority (end one with node.observer remove)")
        state.put(OBSERVER + tx.subject, ObserverState(tx.signer, tx.name, now.height))
        return
    if current is None:
        raise Reject(Reason.NOT_OBSERVER, "the subject is no observer")
    state.delete(OBSERVER + tx.subject)


def node_announce(state: Overlay, tx: NodeAnnounce, now: BlockContext,
                  _tally: BlockTally) -> None:
    _in_rules(now)
    signer = tx.signer
    if signer not in now.authorities and signer not in authorities(state, now.height + 2) \
            and signer not in observers(state, now.height - 1):
        raise Reject(Reason.NOT_AUTHORITY_OR_OBSERVER,
                     "only an authority or an observer an authority vouched for announces its "
                     "addresses")
    if len(set(tx.addresses)) != len(tx.addresses):
        raise Reject(Reason.DUPLICATE_ADDRESS, "an address appears twice")
    for address in tx.addresses:
        problem = peer_address_problem(address)
        if problem is not None:
            raise Reject(Reason.BAD_ADDRESS, f"{address}: {problem}")
    last = announced(state, signer)
    if last is not None and now.height - last.height < ANNOUNCE_INTERVAL_BLOCKS:
        raise Reject(Reason.ANNOUNCE_TOO_SOON,
                     f"this node announced at height {last.height}; again from height "
                     f"{last.height + ANNOUNCE_INTERVAL_BLOCKS}")
    state.put(ADDRESS + signer, AddressState(tx.addresses, now.height))
