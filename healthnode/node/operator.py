"""The operator's admin methods: the node's status, its links and connections, submitting
transactions, blocks and transactions by height and hash, the authority set and votes to change
it, the mempool, equivocation evidence, provider registration, a patient's audit trail, commit
certificates, backups, and the rotation of this node's key (docs/operations.md shows each with an
example).

Every method checks its parameters before it does anything and answers a bad one with
INVALID_PARAMS naming the parameter; a refusal by the mempool or the ledger is REFUSED with the
ledger's reason. The methods that sign (`validator_propose`, `provider_register`,
`provider_revoke`, `key_rotate`) sign with the node key through `Node.submit_own`, so the ledger
rules decide who may do what, exactly as for any other signer (`key_rotate` has the new key sign
its consent too, node/rotation.py). Everything read comes from finalized state,
except the mempool and pending evidence, which say so.

`backup` copies the chain store from a LevelDB snapshot in a worker thread: the node keeps
finalizing while it runs, and the copy is one consistent head. The node key is never copied.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from healthnode import __version__, crypto, limits, logs
from healthnode.admin import rpc
from healthnode.codec import CodecError
from healthnode.errors import ConfigError, HealthnodeError, KeyFileError, TxRefused
from healthnode.home import config as config_module
from healthnode.home.backup import BackupManifest, write_backup
from healthnode.ledger import queries, rules
from healthnode.ledger.rules import peers, rounds
from healthnode.ledger.state import StateView
from healthnode.net.addresses import peer_public_key
from healthnode.net.framing import P2PError
from healthnode.net.sync import fetch_blocks
from healthnode.node import rotation
from healthnode.node.health import Missed
from healthnode.protocol.block import PREVOTE, DuplicateVote, Evidence, quorum
from healthnode.protocol.genesis import ROUNDS_FROM, RULES_NEWEST, RULES_OLDEST, Authority
from healthnode.protocol.state import ValidatorProposal
from healthnode.protocol.tx import (
    ROLES,
    VALIDATOR_ACTIONS,
    AccessLog,
    AnyTx,
    ConsentGrant,
    ConsentGrantPurposes,
    ConsentRevoke,
    ConsentRevokeProvider,
    EmergencyDeal,
    EmergencyEpochKey,
    EmergencyPolicy,
    EmergencyRefresh,
    EmergencyReshare,
    EmergencyVerdict,
    NodeAnnounce,
    NodeObserver,
    NodeRotate,
    ProviderRegister,
    ProviderRevoke,
    RecordAnchor,
    RecordErase,
    RecordPurged,
    RepresentativeAct,
    RepresentativeAppoint,
    RepresentativeEnd,
    RulesVote,
    ValidatorVote,
    decode_tx,
)

log = logs.get_logger("healthnode.operator")

KIND_NAMES: Final[dict[type[AnyTx], str]] = {
    ProviderRegister: "provider.register", ProviderRevoke: "provider.revoke",
    RecordAnchor: "record.anchor", ConsentGrant: "consent.grant",
    ConsentRevoke: "consent.revoke", AccessLog: "access.log", RecordErase: "record.erase",
    ValidatorVote: "validator.vote", EmergencyPolicy: "emergency.policy",
    EmergencyReshare: "emergency.reshare", RulesVote: "rules.vote",
    RecordPurged: "record.purged", EmergencyEpochKey: "emergency.epoch_key",
    EmergencyDeal: "emergency.deal", EmergencyVerdict: "emergency.verdict",
    EmergencyRefresh: "emergency.refresh", NodeObserver: "node.observer",
    NodeAnnounce: "node.announce", NodeRotate: "node.rotate",
    ConsentGrantPurposes: "consent.grant_purposes",
    ConsentRevokeProvider: "consent.revoke_provider",
    RepresentativeAppoint: "representative.appoint", RepresentativeEnd: "representative.end",
    RepresentativeAct: "representative.act",
}
SYNC_CHECK_TIMEOUT_S: Final = 10.0  # validator_propose's ask of a subject for a recent block
SYNC_CHECK_LAG_BLOCKS: Final = 5  # ... this far below our head: a follower a few blocks behind
LIST_DEFAULT: Final = 100  # entries a listing returns unless `limit` says otherwise
LIST_MAX: Final = 1000  # a listing's largest `limit`: keeps one answer well under a MiB
AUDIT_LIST_MAX: Final = 10_000  # a patient's trail: ~300 bytes of JSON each, 3 MiB at most
SUBMIT_BATCH_TXS_MAX: Final = 1000  # one admin request (fits the admin line limit in hex)
WAIT_FINAL_TIMEOUT_S: Final = 30  # `wait`: a transaction is normally final in under a second
PATH_BYTES_MAX: Final = 4095  # `backup`'s `dir`: Linux's PATH_MAX, 4,096 bytes with the NUL

if TYPE_CHECKING:
    from pathlib import Path as _Path

    from healthnode.consensus.core import Core
    from healthnode.home.config import NodeConfig
    from healthnode.ledger.mempool import Mempool
    from healthnode.metrics import NodeMetrics
    from healthnode.net.framing import Transport
    from healthnode.net.gossip import Gossip
    from healthnode.node.admission import Submitter
    from healthnode.node.emergency import EmergencyDuties
    from healthnode.node.health import Readiness, SignerLiveness
    from healthnode.node.restore import RestoreHold
    from healthnode.protocol.genesis import Genesis
    from healthnode.store.leveldb import ChainStore


class OperatedNode(Protocol):
    """The port the operator's methods work through: what they read of a node (its parts,
    its status), and its `submitter` for the transactions they sign. `node/daemon.Node` is
    one; this module never imports it."""

    home: _Path
    config: NodeConfig
    genesis: Genesis
    store: ChainStore
    mempool: Mempool
    submitter: Submitter
    p2p: Transport
    gossip: Gossip
    core: Core
    emergency: EmergencyDuties
    restore_hold: RestoreHold
    metrics: NodeMetrics
    liveness: SignerLiveness
    manual_peers: dict[bytes, str]

    @property
    def syncing(self) -> bool: ...

    def refresh_peers(self) -> None:
        """Dial the peers the chain and `manual_peers` name now (node/daemon.py)."""
        ...

    def readiness(self) -> Readiness: ...

    def start_background(self, task: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run `task(*args)` in the node's nursery (a backup, which outlives its request)."""
        ...

    def resources(self) -> dict[str, Any]: ...


@dataclass
class BackupJob:
    """One backup: its progress (updated from the worker thread, one int at a time) and end."""

    dir: str
    bytes_estimate: int  # LevelDB's estimate of the store's size on disk (compressed) at start
    state: str = "running"  # running, done, failed
    keys: int = 0
    bytes: int = 0
    manifest: BackupManifest | None = None
    error: str | None = None

    def copied(self, keys: int, copied_bytes: int) -> None:
        self.keys, self.bytes = keys, copied_bytes

    def to_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"dir": self.dir, "state": self.state, "keys_copied": self.keys,
                                  "bytes_copied": self.bytes,
                                  "bytes_estimate": self.bytes_estimate}
        if self.manifest is not None:
            answer.update(height=self.manifest.height, head_hash=self.manifest.head_hash.hex(),
                          keys=self.manifest.keys, created_ms=self.manifest.created_ms)
        if self.error is not None:
            answer["error"] = self.error
        return answer


class OperatorMethods:
    """The operator's methods of a node (`Node.admin_methods`), each a method of
    this object, which holds the node and the lock that keeps backups one at a time."""

    def __init__(self, node: OperatedNode) -> None:
        self.node = node
        self.own_key = node.submitter.public_key
        self.backup_lock = trio.Lock()
        self.backup_job: BackupJob | None = None

    def submit(self, build: Callable[[int], AnyTx]) -> AnyTx:
        try:
            return self.node.submitter.submit_own(build)
        except TxRefused as error:
            raise rpc.RpcError(rpc.REFUSED, f"transaction refused: {error}") from None
        except CodecError as error:  # a parameter the checks above let through
            raise rpc.RpcError(rpc.INVALID_PARAMS, str(error)) from None

    async def settle(self, tx: AnyTx, wait: bool) -> dict[str, Any]:
        if not wait:
            return {"tx_hash": tx.hash.hex(), "status": "pending"}
        outcome = await self.node.submitter.wait_final(tx.hash, WAIT_FINAL_TIMEOUT_S)
        if outcome.height is not None:
            return {"tx_hash": tx.hash.hex(), "height": outcome.height}
        if outcome.timed_out:
            raise rpc.RpcError(rpc.REFUSED, (
                f"transaction {tx.hash.hex()} is not final after {WAIT_FINAL_TIMEOUT_S} s; "
                f"it may still be (method tx)"))
        raise rpc.RpcError(rpc.REFUSED, f"transaction refused: {outcome.refusal}")

    def names_at(self, height: int) -> dict[bytes, str]:
        return queries.authority_names(self.node.store, height)

    # --- the node, its links and the chain ------------------------------------------------

    async def status(self, _params: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        head = node.store.head
        return {
            "node": node.config.node.name,
            "chain_id": node.genesis.chain_id,
            # What a hospital gives its patients, for their wallets to pin (docs/wallet.md).
            "genesis_hash": node.genesis.hash.hex(),
            "peer_id": node.p2p.peer_id,
            "height": head.height,
            "head_hash": head.block_hash.hex(),
            # The root of this node's own state tree, computed here (docs/ledger.md).
            "state_root": rules.chain_meta(node.store).state_hash.hex(),
            "round": node.core.round,
            "step": node.core.step_name,
            "peers": len(node.gossip.connected()),
            "validators": [key.hex() for key in rules.authorities(node.store, head.height + 1)],
            "syncing": node.syncing,
            "mempool_txs": len(node.mempool),
            # Bodies held from this height on ([node] keep_blocks, state sync): 1 on an archive.
            "bodies_from_height": node.store.first_body,
            "emergency": self._emergency_status(),
            "version": __version__,
            "last_block_time_ms": rules.chain_meta(node.store).time_ms,
            "ready": node.readiness().to_json(),
            "signers": self._signers(head.height + 1),
            "rules": self._rules_status(head.height + 1),
            # The height its state executes from (0, or the snapshot it joined from) and the
            # snapshots it holds and serves (docs/operations.md, "State sync and pruning").
            "store": {"base": node.store.base, "snapshots": node.store.snapshots()},
        }

    def _rules_status(self, height: int) -> dict[str, Any]:
        """The ledger rules version deciding `height`, the next one scheduled, and the versions
        this release carries."""
        store = self.node.store
        upcoming = [(start, scheduled.rules_version)
                    for start, scheduled in rules.rules_schedule(store) if start > height]
        return {"version": rules.rules_at(store, height),
                "next": {"version": upcoming[0][1], "from_height": upcoming[0][0]}
                if upcoming else None,
                "release_carries": [RULES_OLDEST, RULES_NEWEST]}

    def _signers(self, height: int) -> dict[str, dict[str, Any]]:
        """Signer liveness of the authorities deciding `height`, by name (node/health.py)."""
        names = self.names_at(height)
        return {names.get(key, key.hex()): {
            "public_key": key.hex(), "missed_proposals": missed.proposals,
            "missed_precommits": missed.precommits,
            "last_precommit_height": missed.last_precommit_height}
            for key, missed in ((key, self.node.liveness.by_key.get(key, Missed()))
                                for key in rules.authorities(self.node.store, height))}

    def _emergency_status(self) -> dict[str, Any] | None:
        store = self.node.store
        key = rules.emergency_key(store)
        found = rounds.current_round(store)
        round_status = None if found is None else {
            "number": found.number, "purpose": found.purpose, "phase": found.phase,
            "since_height": found.phase_since, "outcome": found.outcome or None,
            "threshold": found.threshold,
            "recipients": [found.target[j - 1].hex() for j in found.recipients]}
        if key is None:
            return None if found is None else {"public_key": None, "round": round_status}
        share = self.node.emergency.share
        return {"public_key": key.key.public_key.hex(), "threshold": key.key.threshold,
                "epoch": key.epoch, "holders": [c.authority.hex() for c in key.key.commitments],
                "my_index": share[0] if share else None,
                "reshare_due": (rules.reshare_target(store) or (None,))[0]
                if rules.rules_at(store, store.head.height + 1) < ROUNDS_FROM else None,
                "round": round_status}

    async def peers(self, _params: dict[str, Any]) -> list[dict[str, Any]]:
        node = self.node
        return [{"public_key": key.hex(), "peer_id": crypto.peer_id(key),
                 "address": link.address, "connected": link.connected,
                 "link_ups": link.ups, "connections": node.p2p.connections_to(key),
                 "dropped_frames": link.dropped}
                for key, link in node.gossip.links.items()]

    async def connections(self, _params: dict[str, Any]) -> dict[str, Any]:
        return self.node.resources()

    async def peer_disconnect(self, params: dict[str, Any]) -> dict[str, Any]:
        """Close every connection to one authority now; its gossip link redials by itself. For
        operators (a link that looks stuck) and for the soak's link cuts."""
        text = rpc.require(params, "peer", str)
        try:
            peer = bytes.fromhex(text)
        except ValueError:
            raise rpc.RpcError(rpc.INVALID_PARAMS, "peer: not hex") from None
        link = self.node.gossip.links.get(peer)
        if link is None:
            raise rpc.RpcError(rpc.INVALID_PARAMS, "peer: not a configured authority of this node")
        was_connected, stream = link.connected, link.stream
        with trio.move_on_after(5):
            if stream is not None:
                await stream.close_connection()
            await self.node.p2p.disconnect(peer)
        return {"peer": text, "was_connected": was_connected}

    async def submit_tx(self, params: dict[str, Any]) -> dict[str, Any]:
        text = rpc.require(params, "tx", str)
        try:
            raw = bytes.fromhex(text)
            tx = decode_tx(raw)
        except (ValueError, CodecError) as error:
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"tx: {error}") from None
        refusal = self.node.submitter.admit(tx, len(raw))
        if refusal is not None:
            raise rpc.RpcError(rpc.REFUSED, f"transaction refused: {refusal}")
        return {"tx_hash": tx.hash.hex()}

    async def submit_txs(self, params: dict[str, Any]) -> dict[str, Any]:
        """A batch of transactions (hex) in one request: for load tools and gateways."""
        texts = rpc.require(params, "txs", list)
        if len(texts) > SUBMIT_BATCH_TXS_MAX:
            raise rpc.RpcError(rpc.INVALID_PARAMS,
                               f"txs: at most {SUBMIT_BATCH_TXS_MAX} per request")
        refused = []
        for index, text in enumerate(texts):
            try:
                raw = bytes.fromhex(text) if isinstance(text, str) else b""
                refusal = self.node.submitter.admit(decode_tx(raw), len(raw))
                reason = None if refusal is None else str(refusal)
            except (ValueError, CodecError) as error:
                reason = f"malformed: {error}"
            if reason is not None:
                refused.append({"index": index, "reason": reason})
        return {"accepted": len(texts) - len(refused), "refused": refused}

    async def block(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The block of a height; of a height whose body this node pruned (or never held,
        below the snapshot it joined from), the header, with `"body": "pruned"`."""
        store = self.node.store
        height = rpc.require_height(params)
        found = store.block(height)
        header = found.header if found is not None else store.header(height)
        if header is None:
            return None
        return {"height": header.height, "hash": header.hash.hex(), "time_ms": header.time_ms,
                "txs": None if found is None else [tx.hash.hex() for tx in found.txs],
                "body": "held" if found is not None else "pruned",
                "proposer": header.proposer.hex(), "state_hash": header.state_hash.hex()}

    async def tx(self, params: dict[str, Any]) -> dict[str, Any]:
        tx_hash = rpc.require_hash(params, "tx_hash")
        store = self.node.store
        location = store.tx_location(tx_hash)
        if location is not None:
            return {"status": "final", "height": location[0], "index": location[1]}
        if tx_hash in self.node.mempool:
            return {"status": "pending"}
        if store.first_body > 1:  # one in a pruned body that the state does not name is gone
            return {"status": "unknown", "bodies_from_height": store.first_body}
        return {"status": "unknown"}

    # --- authorities --------------------------------------------------------------------

    def open_proposals(self) -> list[tuple[bytes, ValidatorProposal]]:
        return queries.open_proposals(self.node.store)

    async def validators(self, params: dict[str, Any]) -> dict[str, Any]:
        rpc.require_none(params)
        head = self.node.store.head.height
        current = rules.authority_set(self.node.store, head + 1)
        upcoming = rules.authority_set(self.node.store, head + 2)
        names = {a.public_key: a.name for a in (*current.authorities, *upcoming.authorities)}
        proposals = []
        for proposal_id, proposal in self.open_proposals():
            proposals.append({
                "id": proposal_id.hex(), "action": proposal.action,
                "subject": proposal.subject.hex(), "name": proposal.name,
                "voters": [{"public_key": voter.hex(), "name": names.get(voter)}
                           for voter in proposal.voters],
                "backing": sum(1 for voter in proposal.voters if voter in current.keys),
                "needed": quorum(len(current.keys)),
            })
        return {
            "height": head,
            "authorities": {"from_height": head + 1,
                            "members": [_authority_json(a, self.node.store)
                                        for a in current.authorities]},
            "next": None if upcoming.keys == current.keys else {
                "from_height": head + 2,
                "members": [_authority_json(a, self.node.store)
                            for a in upcoming.authorities]},
            "proposals": proposals,
            "rotations": [{"name": names.get(old), "public_key": old.hex(),
                           "new_key": waiting.new_key.hex(), "from_height": waiting.height}
                          for old, waiting in rules.pending_rotations(self.node.store)],
            "self": {"public_key": self.own_key.hex(), "authority": self.own_key in current.keys,
                     "signing_hold": self.node.restore_hold.describe()},
        }

    async def _not_ready(self, subject: bytes) -> str | None:
        """Why a node is not yet ready to be voted in (None: it is): this node has a link to
        it, and it serves the block `SYNC_CHECK_LAG_BLOCKS` below this node's head, the same
        block (it has synced).
        Voting in a node that cannot vote yet would take a 4-node network to 5 authorities, a
        quorum of 4, with only 4 that vote: no fault tolerated."""
        node = self.node
        link = node.gossip.links.get(subject)
        if (link is None or not link.connected) and not node.p2p.connections_to(subject):
            return ("this node has no connection to the subject: run it as an observer first "
                    "(observer_add, then it announces its addresses) and let it sync")
        height = max(1, node.store.head.height - SYNC_CHECK_LAG_BLOCKS)
        header = node.store.header(height)  # kept when the body is pruned
        ours = None if header is None else header.hash
        try:
            with trio.fail_after(SYNC_CHECK_TIMEOUT_S):
                async for item in fetch_blocks(node.p2p, subject, height, 1):
                    if item.block.hash == ours:
                        return None
                    return f"the subject's block {height} is not this node's"
        except (P2PError, trio.TooSlowError) as error:
            return f"the subject did not serve block {height} ({str(error)[:80]})"
        return f"the subject has not synced to height {height} yet"

    async def validator_propose(self, params: dict[str, Any]) -> dict[str, Any]:
        action = rpc.require_choice(params, "action", VALIDATOR_ACTIONS)
        subject = rpc.require_public_key(params, "subject")
        wait = rpc.require(params, "wait", bool, False)
        force = rpc.require(params, "force", bool, False)
        if action == "add" or "name" in params:
            name = rpc.require_name(params, "name")
        else:  # a removal names the member as the ledger knows it
            member = self.names_at(self.node.store.head.height + 2).get(subject)
            if member is None:
                raise rpc.RpcError(rpc.REFUSED, "subject_not_authority: the subject is no "
                                                "authority")
            name = member
        if action == "add" and not force:
            problem = await self._not_ready(subject)
            if problem is not None:
                log.warning("validator_add_not_ready", subject=subject.hex()[:16],
                            problem=problem)
                raise rpc.RpcError(rpc.REFUSED, (
                    f"subject_not_ready: {problem}. Voting it in now would leave the network "
                    f"one authority that cannot vote; --param force=true votes anyway"))
        tx = self.submit(lambda nonce: ValidatorVote(
            signer=self.own_key, nonce=nonce, action=action, subject=subject, name=name))
        log.info("validator_vote_submitted", action=action, subject=subject.hex()[:16],
                 tx_hash=tx.hash.hex()[:16])
        return await self.settle(tx, wait)

    async def key_rotate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Replace this node's key by the key in `key_file` from block `height` on: a
        `node.rotate` signed by this node's key, with the new key's consent, and the new key
        staged in the home (node/rotation.py). The node stops after block `height` - 1 and takes
        up the new key at its next start."""
        key_file = _absolute_path(params, "key_file")
        height = rpc.require_int(params, "height", 1, limits.HEIGHT_MAX)
        passphrase_file = _absolute_path(params, "passphrase_file") \
            if "passphrase_file" in params else None
        wait = rpc.require(params, "wait", bool, False)
        try:
            raw, new = rotation.open_new_key(key_file, passphrase_file)
        except KeyFileError as error:
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"parameter 'key_file': {error}") from None
        consent = NodeRotate.new_key_consent(new, self.node.genesis.chain_id, self.own_key,
                                             height)
        submitter = self.node.submitter
        tx = submitter.sign_own(lambda nonce: NodeRotate(
            signer=self.own_key, nonce=nonce, new_key=new.public_key, height=height,
            new_signature=consent))
        refusal = submitter.check(tx)
        if refusal is not None:
            raise rpc.RpcError(rpc.REFUSED, f"transaction refused: {refusal}")
        waiting = any(isinstance(other, NodeRotate) and other.signer == self.own_key
                      for other in self.node.mempool.candidates())
        try:
            staged = rotation.stage_new_key(self.node.home, raw, new.public_key,
                                            replace_other=not waiting)
        except KeyFileError as error:
            raise rpc.RpcError(rpc.REFUSED, str(error)) from None
        refusal = submitter.admit(tx)
        if refusal is not None:
            if staged is not None and not waiting:
                rotation.unstage(staged)
            raise rpc.RpcError(rpc.REFUSED, f"transaction refused: {refusal}")
        log.info("key_rotation_submitted", new_key=new.public_key.hex()[:16],
                 from_height=height, staged=str(staged), tx_hash=tx.hash.hex()[:16])
        return {**await self.settle(tx, wait), "new_key": new.public_key.hex(),
                "peer_id": crypto.peer_id(new.public_key), "from_height": height,
                "staged": None if staged is None else str(staged)}

    # --- the ledger rules' versions ----------------------------------------------------------

    async def rules_versions(self, params: dict[str, Any]) -> dict[str, Any]:
        """The rules version in force, every version scheduled, and the open votes."""
        rpc.require_none(params)
        store = self.node.store
        head = store.head.height
        names = self.names_at(head + 1)
        current = rules.authorities(store, head + 1)
        return {
            "height": head, **self._rules_status(head + 1),
            "schedule": [{"version": scheduled.rules_version, "from_height": start,
                          "decided_height": scheduled.decided_height}
                         for start, scheduled in rules.rules_schedule(store)],
            "proposals": [{"version": proposal.rules_version, "from_height": proposal.height,
                           "voters": [{"public_key": voter.hex(), "name": names.get(voter)}
                                      for voter in proposal.voters],
                           "backing": sum(1 for voter in proposal.voters if voter in current),
                           "needed": quorum(len(current))}
                          for _, proposal in queries.rules_proposals(store)],
        }

    async def rules_propose(self, params: dict[str, Any]) -> dict[str, Any]:
        """This node's vote that the rules become `version` from `height`. A node votes only
        for a version its own release carries: its operator upgrades it first."""
        version = rpc.require_int(params, "version", 1, limits.RULES_VERSION_MAX)
        height = rpc.require_int(params, "height", 1, limits.HEIGHT_MAX)
        wait = rpc.require(params, "wait", bool, False)
        if version > RULES_NEWEST:
            raise rpc.RpcError(rpc.REFUSED, (
                f"this node's release carries rules versions {RULES_OLDEST} to {RULES_NEWEST}: "
                f"install a release that carries version {version} here before voting for it"))
        tx = self.submit(lambda nonce: RulesVote(
            signer=self.own_key, nonce=nonce, rules_version=version, height=height))
        log.info("rules_vote_submitted", version=version, from_height=height,
                 tx_hash=tx.hash.hex()[:16])
        return await self.settle(tx, wait)

    async def observer_add(self, params: dict[str, Any]) -> dict[str, Any]:
        """This authority vouches for an observer (a hospital that will join): every authority
        then lets it in, serves it blocks and dials its announced addresses."""
        return await self._observer(params, "add")

    async def observer_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self._observer(params, "remove")

    async def _observer(self, params: dict[str, Any], action: str) -> dict[str, Any]:
        subject = rpc.require_public_key(params, "subject")
        name = rpc.require_name(params, "name") if action == "add" or "name" in params \
            else "observer"
        wait = rpc.require(params, "wait", bool, False)
        tx = self.submit(lambda nonce: NodeObserver(
            signer=self.own_key, nonce=nonce, action=action, subject=subject, name=name))
        log.info("observer_vouched" if action == "add" else "observer_ended",
                 subject=subject.hex()[:16], tx_hash=tx.hash.hex()[:16])
        return await self.settle(tx, wait)

    async def observers(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The observers the authorities vouched for, with their announced addresses."""
        rpc.require_none(params)
        store = self.node.store
        listed = []
        for key, observer in sorted(peers.observers(store, store.head.height).items()):
            announced = peers.announced(store, key)
            link = self.node.gossip.links.get(key)
            listed.append({"public_key": key.hex(), "name": observer.name,
                           "sponsor": observer.sponsor.hex(), "since_height": observer.height,
                           "addresses": list(announced.addresses) if announced else [],
                           "connected": link is not None and link.connected})
        return listed

    async def peer_add(self, params: dict[str, Any]) -> dict[str, Any]:
        """Dial a peer at an address given by hand (a multiaddr with /p2p/), until this node
        stops; the chain's announced address of a key does not replace it."""
        address = rpc.require_text(params, "address", 300)
        problem = config_module.dial_address_problem(address)
        if problem is not None:
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"parameter 'address': {problem}")
        try:
            key = peer_public_key(address)
        except ConfigError as error:
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"parameter 'address': {error}") from None
        if key == self.own_key:
            raise rpc.RpcError(rpc.INVALID_PARAMS, "parameter 'address' is this node's own")
        self.node.manual_peers[key] = address
        self.node.refresh_peers()
        log.info("peer_added_by_hand", peer=key.hex()[:16], address=address)
        return {"public_key": key.hex(), "address": address}

    async def emergency(self, params: dict[str, Any]) -> dict[str, Any]:
        """The emergency key in force and its round, open or last closed, with each
        authority's part in it: its epoch key, its dealing (and who disqualified it), its
        verdict (whom it showed to be wrong). Public state, as the ledger holds it."""
        rpc.require_none(params)
        store = self.node.store
        found = rounds.current_round(store)
        names = self.names_at(store.head.height + 1)
        members = None
        if found is not None:
            dealers = rounds.dealers_of(store, found)
            deals = {d.dealer: d for d in rounds.round_deals(store, found.number)}
            members = []
            leaving = [dealer for dealer in dealers if dealer not in found.target]
            for member in (*found.target, *leaving):
                epoch_key = rounds.epoch_key_of(store, found.number, member)
                dealing = deals.get(member)
                verdict = rounds.round_verdict(store, found.number, member)
                members.append({
                    "public_key": member.hex(), "name": names.get(member),
                    "recipient_index": rounds.recipient_index(found, member),
                    "epoch_key": None if epoch_key is None else epoch_key.hex(),
                    "dealer": member in dealers, "dealt": dealing is not None,
                    "disqualified_by": None if dealing is None or dealing.disqualified_by is None
                    else dealing.disqualified_by.hex(),
                    "verdict": None if verdict is None else [d.hex() for d in verdict.complaints]})
        return {**(self._emergency_status() or {"public_key": None, "round": None}),
                "phase_blocks": rounds.ROUND_PHASE_BLOCKS,
                "refresh_blocks": self.node.config.emergency.refresh_blocks,
                "members": members}

    async def emergency_refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        """This node's request for a refresh of the emergency shares now (after a suspected
        compromise of a node, say): a refresh round opens when the key's threshold of holders
        have asked. The node asks by itself every `[emergency] refresh_blocks` blocks."""
        wait = rpc.require(params, "wait", bool, False)
        key = rules.emergency_key(self.node.store)
        if key is None:
            raise rpc.RpcError(rpc.REFUSED, "this network has no emergency key to refresh")
        tx = self.submit(lambda nonce: EmergencyRefresh(
            signer=self.own_key, nonce=nonce, epoch=key.epoch))
        log.info("emergency_refresh_asked", epoch=key.epoch, tx_hash=tx.hash.hex()[:16])
        return await self.settle(tx, wait)

    async def validator_discard(self, params: dict[str, Any]) -> dict[str, Any]:
        if "tx_hash" in params:
            if "action" in params or "subject" in params:
                raise rpc.RpcError(rpc.INVALID_PARAMS,
                                   "give either 'tx_hash' or 'action' and 'subject', not both")
            vote = self._own_vote_by_hash(rpc.require_hash(params, "tx_hash"))
        else:
            action = rpc.require_choice(params, "action", VALIDATOR_ACTIONS)
            vote = self._own_vote_by_change(action, rpc.require_public_key(params, "subject"))
        highest = self.node.mempool.highest_nonce(self.own_key)
        if highest is not None and vote.nonce != highest:
            raise rpc.RpcError(rpc.REFUSED, (
                f"the vote has nonce {vote.nonce}, and this node's transactions with nonces "
                f"{vote.nonce + 1}..{highest} wait behind it: without it they would never be "
                f"final (nonce gap), so it can no longer be withdrawn"))
        self.node.mempool.remove(vote.hash)
        self.node.metrics.mempool_txs.set(len(self.node.mempool))
        log.info("validator_vote_discarded", action=vote.action, subject=vote.subject.hex()[:16],
                 tx_hash=vote.hash.hex()[:16], nonce=vote.nonce)
        return {"discarded": vote.hash.hex(), "nonce": vote.nonce,
                "note": "removed from this node's mempool only: a peer that already received "
                        "it may still finalize it; this node's next transaction takes its nonce, "
                        "so at most one of the two becomes final"}

    def _own_vote_by_hash(self, tx_hash: bytes) -> ValidatorVote:
        location = self.node.store.tx_location(tx_hash)
        tx = self.node.store.tx(tx_hash) if location is not None else self.node.mempool.get(tx_hash)
        if tx is None:
            raise rpc.RpcError(rpc.REFUSED, "no such transaction waiting in this node's mempool "
                                            "(unknown, or already evicted)")
        if not (isinstance(tx, ValidatorVote) and tx.signer == self.own_key):
            raise rpc.RpcError(rpc.REFUSED, "not a validator vote of this node")
        if location is not None:
            raise rpc.RpcError(rpc.REFUSED, _FINAL_VOTE.format(where=f"at height {location[0]}"))
        return tx

    def _own_vote_by_change(self, action: str, subject: bytes) -> ValidatorVote:
        waiting = [tx for tx in self.node.mempool.candidates()
                   if isinstance(tx, ValidatorVote) and tx.signer == self.own_key
                   and tx.action == action and tx.subject == subject]
        if waiting:
            return max(waiting, key=lambda tx: tx.nonce)
        if any(proposal.action == action and proposal.subject == subject
               and self.own_key in proposal.voters for _, proposal in self.open_proposals()):
            raise rpc.RpcError(rpc.REFUSED, _FINAL_VOTE.format(
                where="(this node is among the open proposal's voters)"))
        raise rpc.RpcError(rpc.REFUSED, f"no waiting vote of this node to {action} "
                                        f"{subject.hex()[:16]}")

    # --- mempool, evidence, certificates --------------------------------------------------

    async def mempool(self, params: dict[str, Any]) -> dict[str, Any]:
        limit = _limit(params, LIST_MAX)
        waiting = self.node.mempool.candidates()
        by_kind = Counter(KIND_NAMES[type(tx)] for tx in waiting)
        return {
            "txs": len(self.node.mempool), "bytes": self.node.mempool.size_bytes,
            "txs_max": self.node.mempool.txs_max, "bytes_max": self.node.mempool.bytes_max,
            "reserved_txs": self.node.mempool.reserved_txs,
            "reserved_bytes": self.node.mempool.reserved_bytes,
            "by_kind": dict(sorted(by_kind.items())),
            "waiting": [{"tx_hash": tx.hash.hex(), "kind": KIND_NAMES[type(tx)],
                         "signer": tx.signer.hex(), "nonce": tx.nonce}
                        for tx in waiting[:limit]],
        }

    async def evidence(self, params: dict[str, Any]) -> dict[str, Any]:
        limit = _limit(params, LIST_MAX)
        entries = queries.committed_evidence(self.node.store)
        return {
            "committed": [{"offender": entry.offender.hex(), "height": entry.height,
                           "evidence_hash": entry.evidence_hash.hex()}
                          for entry in entries[:limit]],
            "committed_total": len(entries),
            "pending": [_pending_json(item) for item in self.node.core.evidence_pool()[:limit]],
        }

    async def certificate(self, params: dict[str, Any]) -> dict[str, Any] | None:
        height = rpc.require_height(params)
        found = self.node.store.certificate(height)
        if found is None:
            return None
        names = self.names_at(height)
        return {"height": found.height, "round": found.round,
                "block_hash": found.block_hash.hex(),
                "signers": [{"public_key": sig.signer.hex(), "name": names.get(sig.signer)}
                            for sig in found.signatures]}

    # --- providers and patients -------------------------------------------------------------

    async def provider_register(self, params: dict[str, Any]) -> dict[str, Any]:
        provider = rpc.require_public_key(params, "provider")
        roles = _roles(params)
        display_name = rpc.require_name(params, "display_name")
        wait = rpc.require(params, "wait", bool, True)
        tx = self.submit(lambda nonce: ProviderRegister(
            signer=self.own_key, nonce=nonce, provider=provider, roles=roles,
            display_name=display_name))
        return await self.settle(tx, wait)

    async def provider_revoke(self, params: dict[str, Any]) -> dict[str, Any]:
        provider = rpc.require_public_key(params, "provider")
        wait = rpc.require(params, "wait", bool, True)
        tx = self.submit(lambda nonce: ProviderRevoke(signer=self.own_key, nonce=nonce,
                                                 provider=provider))
        return await self.settle(tx, wait)

    async def audit(self, params: dict[str, Any]) -> dict[str, Any]:
        patient = rpc.require_public_key(params, "patient")
        limit = _limit(params, AUDIT_LIST_MAX)
        trail = queries.audit_trail(self.node.store, patient)
        shown = trail[max(0, len(trail) - limit):] if limit else []
        return {"patient": patient.hex(), "total": len(trail), "entries": [{
            "tx_hash": entry.tx_hash.hex(), "authority": entry.authority.hex(),
            "reader": entry.reader.hex(), "record_id": entry.record_id.hex(),
            "grant_id": entry.grant_id.hex() if entry.grant_id is not None else None,
            "break_glass": bool(entry.break_glass), "purpose": entry.purpose,
            "height": entry.height, "time_ms": entry.time_ms,
        } for entry in shown]}

    # --- backup -----------------------------------------------------------------------------

    async def backup(self, params: dict[str, Any]) -> dict[str, Any]:
        """Start a backup in the background (`backup_status` follows it), or with `wait` run
        it to its end and answer its result. One at a time."""
        destination = _backup_dir(params)
        wait = rpc.require(params, "wait", bool, False)
        running = self.backup_job is not None and self.backup_job.state == "running"
        if running or self.backup_lock.locked():
            raise rpc.RpcError(rpc.REFUSED, "a backup is already running (method backup_status)")
        job = self.backup_job = BackupJob(str(destination), self.node.store.size_estimate())
        if not wait:
            self.node.start_background(self._run_backup, job, destination)
            return job.to_json()
        await self._run_backup(job, destination)
        if job.error is not None:
            raise rpc.RpcError(rpc.REFUSED, f"backup failed: {job.error}")
        return job.to_json()

    async def _run_backup(self, job: BackupJob, destination: Path) -> None:
        """Run `job` in a worker thread. Its end is always recorded: done, or failed with the
        reason. An error that is not the disk's or the store's is a bug of ours, logged as `bug`
        with its traceback; the node goes on (a backup must never stop consensus). When the
        node stops, the copy stops at its next batch (`trio.from_thread.check_cancelled`) and
        what it wrote is removed."""
        node = self.node

        def copied(keys: int, copied_bytes: int) -> None:
            job.copied(keys, copied_bytes)
            trio.from_thread.check_cancelled()  # the node is stopping: raises Cancelled here

        async with self.backup_lock:
            try:
                manifest = await trio.to_thread.run_sync(
                    write_backup, node.store, node.home, node.genesis,
                    node.submitter.public_key, destination, copied)
            except (OSError, HealthnodeError) as error:
                job.state, job.error = "failed", str(error)
                log.warning("backup_failed", dir=str(destination), error=str(error))
                return
            except Exception as error:
                job.state, job.error = "failed", f"internal error: {type(error).__name__}"
                log.error("bug", where="backup", error=type(error).__name__,
                          traceback="".join(traceback.format_exception(error)))
                return
            except BaseException:  # cancelled: the node is stopping
                job.state, job.error = "failed", "the node stopped"
                raise
        job.state, job.manifest = "done", manifest
        log.info("backup_written", dir=str(destination), height=manifest.height,
                 keys=manifest.keys)

    async def backup_status(self, params: dict[str, Any]) -> dict[str, Any]:
        """The last backup this node ran since it started: running, done or failed."""
        rpc.require_none(params)
        if self.backup_job is None:
            return {"state": "none"}
        return self.backup_job.to_json()

    async def methods(self, params: dict[str, Any]) -> list[dict[str, str]]:
        """Every method of this socket with its parameters and a line of help."""
        rpc.require_none(params)
        return [{"method": name, "params": shape, "help": line}
                for name, (shape, line) in sorted(METHOD_HELP.items())]

    def table(self) -> dict[str, rpc.Method]:
        return {
            "methods": self.methods, "status": self.status, "peers": self.peers,
            "connections": self.connections,
            "peer_disconnect": self.peer_disconnect, "submit_tx": self.submit_tx,
            "submit_txs": self.submit_txs, "block": self.block, "tx": self.tx,
            "validators": self.validators, "validator_propose": self.validator_propose,
            "validator_discard": self.validator_discard, "key_rotate": self.key_rotate,
            "rules": self.rules_versions,
            "rules_propose": self.rules_propose, "mempool": self.mempool,
            "evidence": self.evidence,
            "certificate": self.certificate, "provider_register": self.provider_register,
            "provider_revoke": self.provider_revoke, "audit": self.audit, "backup": self.backup,
            "backup_status": self.backup_status, "emergency": self.emergency,
            "emergency_refresh": self.emergency_refresh, "observer_add": self.observer_add,
            "observer_remove": self.observer_remove, "observers": self.observers,
            "peer_add": self.peer_add,
        }




# What `methods` answers, and `healthnode admin --home DIR methods` prints: each method's
# parameters (`name?` is optional) and a line of help. tests/test_admin_operator.py checks that
# every method of the table is here and nothing else.
METHOD_HELP: Final = {
    "methods": ("", "this list"),
    "status": ("", "height, head, round, peers, readiness, signer liveness, version, rules"),
    "peers": ("", "the configured authority links: connected, link ups, queue drops"),
    "connections": ("", "open connections by kind, files, tasks, refusals, dials"),
    "peer_disconnect": ("peer (hex public key)",
                        "close every connection to one authority; its link redials"),
    "submit_tx": ("tx (hex)", "admit a signed transaction to the mempool and gossip it"),
    "submit_txs": (f"txs (list of hex, at most {SUBMIT_BATCH_TXS_MAX})",
                   "admit a batch of signed transactions"),
    "block": ("height", "a finalized block"),
    "tx": ("tx_hash", "where a transaction is: final (height, index), pending or unknown"),
    "validators": ("", "the authority set now and the validator votes pending"),
    "validator_propose": ("action (add|remove), subject (public key), name?, wait?, force?",
                          "this node's vote to add or remove an authority (an add is refused "
                          "until the subject is linked and synced, unless force)"),
    "validator_discard": ("tx_hash | action and subject",
                          "withdraw this node's vote while it waits in the mempool"),
    "key_rotate": ("key_file (absolute path of the new node key file), height, "
                   "passphrase_file? (a sealed key's), wait?",
                   "replace this node's key from height on (signed by both keys); the new key "
                   "is staged in the home, and the node stops before height"),
    "rules": ("", "the ledger rules version in force, the versions scheduled, the open votes"),
    "rules_propose": ("version, height, wait?",
                      "this node's vote that the rules become version from height on"),
    "mempool": ("limit?", "the transactions waiting, oldest first"),
    "evidence": ("limit?", "equivocation evidence pending and committed"),
    "certificate": ("height", "the commit certificate that finalized a block"),
    "provider_register": ("provider (public key), roles (list), display_name, wait?",
                          "vouch for a provider key (this hospital's clinician, lab, ...)"),
    "provider_revoke": ("provider (public key), wait?", "end a provider key this node registered"),
    "audit": ("patient (public key), limit?", "a patient's access log, newest last"),
    "backup": ("dir (absolute path of a new or empty directory), wait? (no time limit)",
               "start a verified copy of the store in the background (one at a time)"),
    "backup_status": ("", "the last backup: running (keys and bytes copied), done or failed"),
    "emergency": ("", "the emergency key, its round and each authority's part in it"),
    "emergency_refresh": ("wait?", "this node's request for a refresh of the emergency shares"),
    "observer_add": ("subject (public key), name, wait?",
                     "vouch for an observer: every authority lets it in and dials it"),
    "observer_remove": ("subject (public key), wait?", "end an observer"),
    "observers": ("", "the observers on chain, their addresses and links"),
    "peer_add": ("address (multiaddr with /p2p/)", "dial a peer at this address until restart"),
}


def operator_methods(node: OperatedNode) -> dict[str, rpc.Method]:
    """The operator's methods of `node`, by name (`Node.admin_methods`)."""
    return OperatorMethods(node).table()


_FINAL_VOTE: Final = ("the vote is already final {where}; a final vote cannot be withdrawn; "
                      "vote the opposite action")

# --- parameters ---------------------------------------------------------------------------


def _roles(params: dict[str, Any]) -> tuple[str, ...]:
    roles = rpc.require(params, "roles", list)
    if not roles or not all(isinstance(role, str) and role in ROLES for role in roles):
        raise rpc.RpcError(rpc.INVALID_PARAMS, f"parameter 'roles' must be a non-empty list of: "
                                               f"{', '.join(sorted(ROLES))}")
    return tuple(sorted(set(roles)))


def _limit(params: dict[str, Any], most: int) -> int:
    return rpc.require_int(params, "limit", 0, most, min(LIST_DEFAULT, most))


def _absolute_path(params: dict[str, Any], name: str) -> Path:
    """The absolute path in parameter `name` (the node's working directory is not the
    operator's, so a relative one would name another file)."""
    text = rpc.require_text(params, name, PATH_BYTES_MAX)
    if len(text.encode()) > PATH_BYTES_MAX or not Path(text).is_absolute():
        raise rpc.RpcError(rpc.INVALID_PARAMS, f"parameter '{name}' must be an absolute path "
                                               f"of at most {PATH_BYTES_MAX} bytes")
    return Path(text)


def _backup_dir(params: dict[str, Any]) -> Path:
    text = rpc.require_text(params, "dir", PATH_BYTES_MAX)
    if len(text.encode()) > PATH_BYTES_MAX:
        raise rpc.RpcError(rpc.INVALID_PARAMS, f"parameter 'dir' is longer than "
                                               f"{PATH_BYTES_MAX} bytes")
    destination = Path(text)
    if not destination.is_absolute():
        raise rpc.RpcError(rpc.INVALID_PARAMS, "parameter 'dir' must be an absolute path")
    try:  # a name longer than 255 bytes, a directory we may not read: the OS says which
        if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"parameter 'dir': {destination} exists and "
                                                   f"is not an empty directory")
        if not destination.parent.is_dir():
            raise rpc.RpcError(rpc.INVALID_PARAMS, f"parameter 'dir': {destination.parent} is "
                                                   f"not a directory")
    except OSError as error:
        raise rpc.RpcError(rpc.INVALID_PARAMS,
                           f"parameter 'dir': {error.strerror or error}") from None
    return destination


# --- JSON shapes --------------------------------------------------------------------------


def _authority_json(authority: Authority, view: StateView) -> dict[str, Any]:
    announced = peers.announced(view, authority.public_key)
    return {"public_key": authority.public_key.hex(),
            "peer_id": crypto.peer_id(authority.public_key), "name": authority.name,
            "addresses": list(announced.addresses) if announced else []}


def _pending_json(item: Evidence) -> dict[str, Any]:
    if isinstance(item, DuplicateVote):
        vote = item.vote_a
        return {"kind": "duplicate_vote", "offender": vote.signer.hex(), "height": vote.height,
                "round": vote.round, "vote_type": "prevote" if vote.vote_type == PREVOTE
                else "precommit"}
    proposal = item.proposal_a
    return {"kind": "duplicate_proposal", "offender": proposal.signer.hex(),
            "height": proposal.height, "round": proposal.round}
