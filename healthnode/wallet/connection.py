"""A wallet's connection to one node: its own libp2p host, keyed by the wallet's identity.

The wallet dials the node with Noise, so the node learns the wallet's public key from the
handshake (the peer id) and the wallet learns it reached the node whose peer id it named. Each
request runs on a stream of its own (protocol/client.py). `--node` names the node by multiaddr
(`/ip4/H/tcp/P/p2p/ID`) or by its home directory on this machine.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, TypeVar

import trio

from healthnode import crypto
from healthnode.codec import CodecError
from healthnode.errors import HealthnodeError
from healthnode.home import keys
from healthnode.home.config import KEY_FILE, load_config
from healthnode.ledger import door
from healthnode.net.p2p import P2P, P2PError  # libp2p: the CLI imports the wallet lazily
from healthnode.protocol.client import (
    CLIENT_FRAME_BYTES_MAX,
    CLIENT_PROTOCOL,
    ClientError,
    ClientRequest,
    ClientResponse,
    decode_response,
)

T = TypeVar("T")

# A read waits for its access.log to be final (up to 30 s at the node); a 16 MiB upload.
REQUEST_TIMEOUT_S: Final = 75


class WalletError(HealthnodeError):
    """The node could not be reached or answered something unusable."""


class Unreachable(WalletError):
    """The node could not be dialled (down, wrong address, or refusing connections)."""


class Lied(WalletError):
    """A node's answer did not hold up against the pinned genesis: it lied, or served a state
    too old to act on. Names the node and the lie; the wallet goes on to the next node."""

    def __init__(self, node: str, what: str, verb: str = "lied") -> None:
        super().__init__(f"node {node} {verb}: {what}")
        self.node = node
        self.what = what


class Stale(Lied):
    """A node served a certified state older than the wallet accepts: it is behind, cut off, or
    hiding something newer (a revocation)."""

    def __init__(self, node: str, what: str) -> None:
        super().__init__(node, what, "serves an old state")


class Refused(WalletError):
    """The node refused the request; `code` is its fixed name (e.g. grant_revoked)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"refused ({code}): {message}")
        self.code = code
        self.reason = message


def resolve_node(text: str) -> str:
    """A node's dialable multiaddr, from a multiaddr or a node home directory."""
    if text.startswith("/"):
        if "/p2p/" not in text and Path(text).is_dir():
            return _address_of_home(Path(text))
        if "/p2p/" not in text:
            raise WalletError(f"--node {text!r}: a multiaddr must end in /p2p/<peer id>")
        return text
    home = Path(text)
    if not home.is_dir():
        raise WalletError(f"--node {text!r}: neither a multiaddr nor a node home directory")
    return _address_of_home(home)


def _address_of_home(home: Path) -> str:
    config = load_config(home)
    public_key = keys.read_key_document(home / KEY_FILE)["public_key"]
    listen = config.p2p.listen[0].replace("/ip4/0.0.0.0/", "/ip4/127.0.0.1/")
    return f"{listen}/p2p/{crypto.peer_id(public_key)}"


class NodeConnection:
    def __init__(self, p2p: P2P, node_public_key: bytes, address: str = "") -> None:
        self._p2p = p2p
        self.node_public_key = node_public_key
        self.address = address

    @property
    def name(self) -> str:
        """How errors name this node: its address (with the peer id it proved to be)."""
        return self.address or crypto.peer_id(self.node_public_key)

    def lied(self, what: str) -> Lied:
        return Lied(self.name, what)

    def stale(self, what: str) -> Stale:
        return Stale(self.name, what)

    async def dial_other(self, address: str, timeout_s: float = 10) -> NodeConnection:
        """A connection to another node over the same wallet host (break-glass asks several)."""
        try:
            with trio.fail_after(timeout_s):
                node_key = await self._p2p.dial(address)
        except (P2PError, trio.TooSlowError) as error:
            raise WalletError(f"cannot reach {address}: {error}") from None
        return NodeConnection(self._p2p, node_key, address)

    async def request(self, message: ClientRequest) -> ClientResponse:
        """Send one request; its answer, or Refused when the node answers with a ClientError."""
        try:
            stream = await self._p2p.open_stream(self.node_public_key, CLIENT_PROTOCOL,
                                                 CLIENT_FRAME_BYTES_MAX)
        except P2PError as error:
            raise WalletError(str(error)) from None
        try:
            with trio.fail_after(REQUEST_TIMEOUT_S):
                await stream.send(message.encode())
                raw = await stream.receive()
        except trio.TooSlowError:
            raise WalletError(f"the node did not answer within {REQUEST_TIMEOUT_S} s") from None
        except CodecError as error:
            raise WalletError(f"the node's answer is not a frame: {error}") from None
        except Exception as error:  # libp2p's stream errors: reset, closed, connection lost
            raise WalletError(f"the node broke off the request ({type(error).__name__})") \
                from None
        finally:
            await stream.close()
        if raw is None:
            raise WalletError("the node closed the stream without answering")
        try:
            response = decode_response(raw)
        except CodecError as error:
            raise WalletError(f"the node's answer does not decode: {error}") from None
        if isinstance(response, ClientError):
            raise Refused(response.code, response.message)
        return response


@asynccontextmanager
async def connect(identity: crypto.Identity, node: str) -> AsyncIterator[NodeConnection]:
    """A connection to the node named by `node` (multiaddr or home), as `identity`."""
    address = resolve_node(node)
    # A wallet is a command, not a daemon: libp2p's chatter (dial attempts) is not for its user.
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    p2p = P2P(identity)
    async with p2p.running([]):  # a wallet dials; it accepts no connections
        try:
            with trio.fail_after(15):
                node_key = await p2p.dial(address)
        except (P2PError, trio.TooSlowError) as error:
            raise Unreachable(f"cannot reach the node at {address}: {error}") from None
        yield NodeConnection(p2p, node_key, address)


async def with_fallback(identity: crypto.Identity, nodes: Sequence[str],
                        operation: Callable[[NodeConnection], Awaitable[T]],
                        warn: Callable[[str], None] | None = None) -> T:
    """Run `operation` on the first of `nodes` that can be reached, is not busy and does not lie.

    Moves on to the next node after a node that cannot be reached, after `node_busy`, which a
    node answers to the first request of a connection that its connection budget refused (so
    nothing of the operation ran there), after `node_restoring` (a node restored from a backup
    serves nothing until it has caught up), after a door budget's refusal (`budget_...`: that
    node has taken its share of patients' transactions or uploads for now, and took nothing of
    this one; ledger/door.py), and after a lie (`Lied`: an answer that did not hold
    up against the pinned genesis, so the wallet acted on none of it). `warn` hears of each
    node left behind when a later one serves. Any other error is the operation's own and is
    raised as it is."""
    failures: list[WalletError] = []

    def tell(outcome: str) -> None:
        if warn is not None:
            for failure in failures:
                warn(f"{failure}; {outcome}")

    for node in nodes:
        try:
            async with connect(identity, node) as connection:
                result = await operation(connection)
        except BaseExceptionGroup as group:
            found = _first_healthnode_error(group)
            if not _next_node_may_serve(found):
                tell(f"{node} answered instead")
                raise
            assert isinstance(found, WalletError)
            failures.append(found)
            continue
        except WalletError as error:
            if not _next_node_may_serve(error):
                tell(f"{node} answered instead")
                raise
            failures.append(error)
            continue
        tell(f"{node} served instead")
        return result
    if len(failures) == 1:
        raise failures[0]
    raise WalletError("no node could serve the request: " + "; ".join(map(str, failures)))


# Refusals that say the node served nothing of the request: another node may.
NOT_SERVING: Final = frozenset({"node_busy", "node_restoring"})


def _next_node_may_serve(error: HealthnodeError | None) -> bool:
    return isinstance(error, Unreachable | Lied) or (
        isinstance(error, Refused) and (error.code in NOT_SERVING
                                        or door.is_budget_refusal(error.code)))


def run_wallet(main: Callable[[], Awaitable[T]]) -> T:
    """`trio.run(main)`, with our own error surfacing from libp2p's nursery unwrapped: a refusal
    is one line for the user, not an exception group."""
    try:
        return trio.run(main)
    except BaseExceptionGroup as group:
        found = _first_healthnode_error(group)
        if found is None:
            raise
        raise found from None


def _first_healthnode_error(group: BaseExceptionGroup[BaseException]) -> HealthnodeError | None:
    for error in group.exceptions:
        if isinstance(error, HealthnodeError):
            return error
        if isinstance(error, BaseExceptionGroup):
            found = _first_healthnode_error(error)
            if found is not None:
                return found
    return None
