"""The soak's clients: real wallet commands, wallets and TCP clients that hang up, and raw admin
exchanges (trio; each function is one client action, and the runner decides when).

Theory of operation. A wallet command is what `healthnode audit` and friends do, minus the
process: a new libp2p host keyed by the wallet's identity (`wallet.connection.connect`), one
command of `wallet/commands.py` over it, and the host closed. `timed` bounds it by
`COMMAND_TIMEOUT_S` and turns any failure into one line of text (the cause the soak records);
it never raises, except trio's own cancellation at the end of the run.

The hang-ups are deliberately rude: a wallet that opens a client stream and sends half a frame
before resetting or vanishing, and raw TCP clients that close, reset or stall before or during
the libp2p handshake. What they get back does not matter; that the node gives back what they
took is what the samples show. The admin exchanges speak raw bytes on the admin socket, so a
hostile line goes out exactly as written.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import trio

from healthnode import crypto
from healthnode.net.framing import encode_frame
from healthnode.net.p2p import P2P
from healthnode.protocol.client import CLIENT_FRAME_BYTES_MAX, CLIENT_PROTOCOL, QueryRequest
from healthnode.protocol.genesis import Genesis
from healthnode.wallet.commands import Wallet
from healthnode.wallet.connection import connect
from healthnode.wallet.trust import Pin

# A wallet command a user waits for longer than this has failed, whatever happens later; a
# record add normally takes one or two block times (about 1 s each).
COMMAND_TIMEOUT_S: Final = 30.0
HANGUP_TIMEOUT_S: Final = 20.0  # a hang-up whose dial or TCP connect hangs is abandoned
ADMIN_ANSWER_BYTES_MAX: Final = 64 * 1024  # an error answer is a line of a few hundred bytes
RECORDS_KEPT: Final = 8  # per patient: the records the soak may read back
RECORD_CATEGORY: Final = "lab"
PATIENTS: Final = 17  # a prime: the row of commands meets every (patient, node) pair in turn
ERROR_CHARS_MAX: Final = 300


@dataclass
class Patient:
    """One patient of the soak's pool: its key, its last records, and a lock so that its own
    commands (nonces!) never overlap, even with a retry of an earlier one."""

    identity: crypto.Identity
    records: list[bytes] = field(default_factory=list)
    lock: trio.Lock = field(default_factory=trio.Lock)


def describe_error(error: BaseException) -> str:
    """One line naming a failure: the first leaf of an exception group (libp2p's nursery wraps
    what the wallet raises), its type and its message."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text[:ERROR_CHARS_MAX]


async def timed(action: Callable[[], Awaitable[object]],
                timeout_s: float = COMMAND_TIMEOUT_S) -> str | None:
    """Run `action` within `timeout_s`: None when it succeeded, else the cause as text."""
    try:
        with trio.move_on_after(timeout_s) as scope:
            await action()
    except Exception as error:  # everything a client can meet is the finding, not a soak bug
        return describe_error(error)
    if scope.cancelled_caught:
        return f"no answer within {timeout_s:.0f} s"
    return None


def record_plaintext(number: int) -> bytes:
    return f"soak record {number}: potassium 4.1 mmol/L\n".encode()


async def wallet_command(kind: str, identity: crypto.Identity, address: str,
                         patient: Patient | None, number: int, genesis: Genesis) -> None:
    """One wallet command as `identity` against the node at `address`, pinned to `genesis`;
    raises on failure."""
    async with connect(identity, address) as connection:
        wallet = Wallet(identity, connection, Pin.of(genesis))
        if kind == "nonce":
            await connection.request(QueryRequest("nonce", None, None))
        elif kind == "audit":
            await wallet.audit()
        elif kind == "records":
            await wallet.list_records(None)
        elif kind == "record_add":
            assert patient is not None, "a record is added by a patient of the pool"
            added = await wallet.add_record(identity.public_key, [RECORD_CATEGORY],
                                            record_plaintext(number))
            patient.records = [*patient.records, bytes.fromhex(added["record_id"])][
                -RECORDS_KEPT:]
        elif kind == "record_get":
            assert patient is not None and patient.records, "a read-back needs a record"
            await wallet.get_record(patient.records[-1], "patient-request", None)
        else:
            raise AssertionError(f"unknown wallet command {kind!r}")


async def wallet_hangup(kind: str, address: str) -> None:
    """A wallet that hangs up mid-request (plan.WALLET_HANGUPS); raises if it could not even
    get as far as its kind needs."""
    p2p = P2P(crypto.Identity.generate())
    async with p2p.running(["/ip4/127.0.0.1/tcp/0"]):
        node_key = await p2p.dial(address)
        if kind == "connect_then_leave":
            return
        stream = await p2p.open_stream(node_key, CLIENT_PROTOCOL, CLIENT_FRAME_BYTES_MAX)
        if kind == "stream_then_close":
            await stream.close()
            return
        frame = encode_frame(QueryRequest("nonce", None, None).encode(), CLIENT_FRAME_BYTES_MAX)
        # Half a frame is what no FramedStream method sends: write to the libp2p stream itself.
        await stream._stream.write(frame[:len(frame) // 2])
        if kind == "half_frame_then_reset":
            await stream.reset()
        # half_frame_then_leave: the host closes below with the stream still open.


async def tcp_hangup(kind: str, host: str, port: int, garbage: bytes, stall_s: float) -> None:
    """A raw TCP client of the node's p2p port that hangs up before or during the handshake
    (plan.TCP_HANGUPS)."""
    stream = await trio.open_tcp_stream(host, port)
    try:
        if kind == "reset_at_once":
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == "half_multistream":
            await stream.send_all(b"\x13/multistream/1")
        elif kind == "garbage":
            await stream.send_all(garbage)
        elif kind == "silent_stall":
            await trio.sleep(stall_s)
    finally:
        await stream.aclose()


async def admin_exchange(path: Path, line: bytes, timeout_s: float) -> bytes | None:
    """Send `line` as is on the admin socket at `path`; the answer line, or None when the node
    closed the connection or did not answer within `timeout_s`."""
    received = bytearray()
    try:
        with trio.move_on_after(timeout_s):
            stream = await trio.open_unix_socket(str(path))
            async with stream:
                await stream.send_all(line)
                while not received.endswith(b"\n") and len(received) < ADMIN_ANSWER_BYTES_MAX:
                    chunk = await stream.receive_some(ADMIN_ANSWER_BYTES_MAX)
                    if not chunk:
                        break
                    received += chunk
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the node hung up on us (or died): whatever arrived is the answer
    return bytes(received) or None


async def hold_half_line(path: Path, line: bytes, hold_s: float,
                         meanwhile: Callable[[], Awaitable[None]]) -> bytes | None:
    """Send a half line on the admin socket, leave it hanging for `hold_s` while `meanwhile`
    runs (a `status` on another connection), then close. Whatever the node sent back (it may
    close a stalled connection with an error line) is returned."""
    received = bytearray()
    try:
        stream = await trio.open_unix_socket(str(path))
        async with stream, trio.open_nursery() as nursery:
            await stream.send_all(line)
            nursery.start_soon(meanwhile)  # the nursery waits for it after the hold
            with trio.move_on_after(hold_s):
                while len(received) < ADMIN_ANSWER_BYTES_MAX:
                    chunk = await stream.receive_some(ADMIN_ANSWER_BYTES_MAX)
                    if not chunk:
                        break  # the node closed the stalled connection itself
                    received += chunk
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return bytes(received) or None
