"""A lying node, for tests only: a libp2p host in front of a real node that rewrites the node's
answers to wallets.

It forwards each client request to the real node as the wallet that asked (the test hands it the
wallets' keys: a node knows who asks, and answers for that wallet) and hands the answer to the
lie of the moment (`Liar.lie`), which may change it. A lie about the state comes with proofs that
agree with it: a state tree holding the lie, a header over that tree, and a certificate signed
with every key the liar holds, one authority's node key (with an authority set of that key
alone, so that its certificate is "complete"). What the wallet has to catch it with is the
pinned genesis.

The proxy runs its own trio loop in a thread, so that tests can run the wallet CLI as real
processes against it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio

from healthnode import crypto
from healthnode.crypto import Identity, digest
from healthnode.ledger import smt
from healthnode.ledger.light import next_set_key
from healthnode.net.p2p import P2P
from healthnode.protocol.block import CommitCertificate, validators_hash
from healthnode.protocol.client import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_PROTOCOL,
    CertifiedHead,
    ClientError,
    ClientResponse,
    KeyProof,
    StateProofRequest,
    StateProofResponse,
    clipped,
    decode_request,
)
from healthnode.protocol.schema import replace
from healthnode.wallet.connection import Refused, WalletError, connect

# A lie: (the request, the asker's identity, the real answer) -> the answer to give. `ask`
# forwards another request to the real node as the same asker.
Ask = Callable[[Any], Awaitable[Any]]
Lie = Callable[[Any, Identity, Any, Ask], Awaitable[Any]]


class _Nodes:
    """A state tree kept in memory (smt's node reader)."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}

    def tree_node(self, key: bytes) -> bytes | None:
        return self.nodes.get(key)


def forge_state(real: StateProofResponse, keys: tuple[bytes, ...],
                values: dict[bytes, bytes | None], liar: Identity) -> StateProofResponse:
    """An answer for `keys` that agrees with `values` (the lie) and with the real answer's
    values for the other keys: a tree holding them, the real head's header over that tree's
    root, certified by `liar` alone as the whole authority set."""
    head = real.head
    entries = {proof.key: proof.value for proof in real.proofs}
    entries[head.next_set.key] = head.next_set.value
    entries.update(values)
    tree = _Nodes()
    update = smt.update(tree, None, 1, [(digest(key), digest(value))
                                        for key, value in entries.items() if value is not None])
    tree.nodes.update(update.written)

    def proof(key: bytes) -> KeyProof:
        found = smt.prove(tree, update.root, digest(key))
        leaf = found.leaf
        return KeyProof(key, entries.get(key), found.siblings, leaf.key_hash if leaf else None,
                        leaf.value_hash if leaf else None)

    authorities = (liar.public_key,)
    header = replace(head.header, state_hash=smt.root_hash(update.root),
                     validators_hash=validators_hash(authorities))
    certificate = CommitCertificate.signed_by(
        SimpleNamespace(height=header.height, hash=header.hash),  # type: ignore[arg-type]
        [liar], header.chain_id)
    return StateProofResponse(
        CertifiedHead(header, certificate, authorities, proof(next_set_key(header.height))),
        tuple(proof(key) for key in keys))


class ThreadedHost:
    """A test's libp2p host with its own trio loop in a thread, beside the test's real node
    processes: `_main` runs in it, calls `_started(scope)` once it serves, and runs until
    `stop`."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    async def _main(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the {type(self).__name__} did not start: {self._error}")

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as error:  # reported by start(), or seen as a dead host
            self._error = error
            self._ready.set()


class Liar(ThreadedHost):
    """The proxy: `address` to give a wallet's `--node`; `lie` (None: honest) to change
    answers; `wallets` (public key -> identity) whom it may forward for."""

    def __init__(self, node_address: str, authority: Identity, port: int) -> None:
        self.node_address = node_address
        self.authority = authority  # the one authority key it holds (its hospital's node key)
        self.identity = Identity.generate()
        self.listen = f"/ip4/127.0.0.1/tcp/{port}"
        self.address = f"{self.listen}/p2p/{crypto.peer_id(self.identity.public_key)}"
        self.wallets: dict[bytes, Identity] = {}
        self.lie: Lie | None = None
        self.seen: list[tuple[Any, Any]] = []  # (request, real answer), newest last
        super().__init__()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        p2p = P2P(self.identity)
        with trio.CancelScope() as scope:
            self._scope = scope
            async with p2p.running([self.listen]):
                p2p.set_handler(CLIENT_PROTOCOL, self._serve, lambda _peer: True,
                                CLIENT_FRAME_BYTES_MAX)
                self._ready.set()
                await trio.sleep_forever()

    async def _serve(self, asker: bytes, stream: Any) -> None:
        try:
            raw = await stream.receive()
            if raw is None:
                return
            request = decode_request(raw)
            identity = self.wallets[asker]
            answer = await self.ask(identity, request)
            self.seen.append((request, answer))
            if self.lie is not None:
                answer = await self.lie(request, identity, answer,
                                        lambda other: self.ask(identity, other))
            await stream.send(answer.encode())
            await stream.close()
        except Exception:  # a lie that broke: the wallet sees a reset
            await stream.reset()
            raise

    async def ask(self, identity: Identity, request: Any) -> ClientResponse:
        """The real node's answer (a ClientError for a refusal) to `request` from `identity`."""
        async with connect(identity, self.node_address) as connection:
            try:
                return await connection.request(request)
            except Refused as refusal:
                return ClientError(refusal.code, clipped(refusal.reason))
            except WalletError as error:
                return ClientError("unreachable", clipped(str(error)))


async def forged_proofs(liar: Liar, request: Any, identity: Identity, answer: Any, ask: Ask,
                        values: dict[bytes, bytes | None]) -> Any:
    """A lie about state keys: answer a proof request that asks for any key of `values` with
    proofs agreeing with `values` (the real node is asked for the other keys)."""
    if not isinstance(request, StateProofRequest) or not set(values) & set(request.keys):
        return answer
    others = tuple(key for key in request.keys if key not in values)
    real = await ask(StateProofRequest(others))
    assert isinstance(real, StateProofResponse), real
    return forge_state(real, request.keys, values, liar.authority)


def node_address(home: Path) -> str:
    from healthnode.wallet.connection import resolve_node

    return resolve_node(str(home))
