"""The admin socket's transport: a Unix stream socket, mode 0600, for the daemon's user and root.

The socket file is created under a umask of 0177, so it is never reachable by others even for an
instant, and chmod'ed to 0600 again after bind. Each connection's peer credentials (SO_PEERCRED)
are checked on accept: only the daemon's own uid and root are served; anyone else gets one error
line and is disconnected. Requests are answered in order, one line each (`admin/rpc.py`); a line
longer than the limit ends the connection.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from healthnode.admin import rpc

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stubs shadow trio's own annotations for mypy.
    from trio_typing import TaskStatus

_UCRED: Final = struct.Struct("3i")  # pid, uid, gid
CONNECTIONS_MAX: Final = 16  # operators, scripts and health checks; more is a misbehaving client


def peer_uid(sock: trio.socket.SocketType) -> int:
    pid_uid_gid = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    _, uid, _ = _UCRED.unpack(pid_uid_gid)
    return int(uid)


def peer_allowed(uid: int) -> bool:
    return uid in (0, os.getuid())


async def open_admin_listener(path: Path) -> trio.SocketListener:
    if path.exists() or path.is_symlink():
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(CONNECTIONS_MAX)
    return trio.SocketListener(sock)


async def serve_admin(path: Path, methods: Mapping[str, rpc.Method],
                      task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `methods` on the socket at `path` until cancelled; removes the socket file after."""
    listener = await open_admin_listener(path)
    limiter = trio.CapacityLimiter(CONNECTIONS_MAX)

    async def handle(stream: trio.SocketStream) -> None:
        async with limiter, stream:
            try:
                if not peer_allowed(peer_uid(stream.socket)):
                    await stream.send_all(rpc.error_response(
                        None, rpc.REFUSED,
                        "admin socket: only the node's user and root are served"))
                    return
                await _serve_connection(stream, methods)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The client hung up (a timeout on its side) before our answer: its loss only.
                # Letting this escape would end serve_listeners and with it the whole node.
                return

    try:
        task_status.started()
        await trio.serve_listeners(handle, [listener])
    finally:
        path.unlink(missing_ok=True)


async def _serve_connection(stream: trio.SocketStream, methods: Mapping[str, rpc.Method]) -> None:
    buffer = bytearray()
    while True:
        try:
            data = await stream.receive_some(rpc.LINE_BYTES_MAX)
        except trio.BrokenResourceError:
            return
        if not data:
            return
        buffer += data
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                await stream.send_all(await rpc.handle_line(line, methods))
        if len(buffer) > rpc.LINE_BYTES_MAX:
            await stream.send_all(rpc.error_response(
                None, rpc.INVALID_REQUEST, f"request longer than {rpc.LINE_BYTES_MAX} bytes"))
            return
