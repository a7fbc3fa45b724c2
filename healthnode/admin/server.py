"""The admin socket's transport: a Unix stream socket, mode 0600, for the daemon's user and root.

The socket file is created under a umask of 0177, so it is never reachable by others even for an
instant, and chmod'ed to 0600 again after bind. Each connection's peer credentials (SO_PEERCRED)
are checked on accept: only the daemon's own uid and root are served; anyone else gets one error
line and is disconnected. Requests are answered in order, one line each (`admin/rpc.py`).

Every client is the operator's own uid, so the socket cannot tell the operator from a runaway
script by who it is; it keeps room for the operator by what each connection is doing. A
connection is *busy* while a method runs for it, and *waiting* otherwise: for its first line, for
the rest of a line, idle between requests, or for its client to read an answer.

- At most `connections_max` (64) connections are open. A new connection when all are open takes
  the place of the one that has been waiting longest, which is closed with an error line. Only
  when every open connection is busy is the newcomer refused, with an error line.
- Busy ends: methods finish (the longest waits for finality, 30 s; `backup` runs one at a time).
  An answer must then be taken by the client within `send_timeout_s` (10 s), or the connection
  is closed.
- Waiting ends too: a new connection must complete its first line within `line_timeout_s`
  (10 s), and any line must be complete within 10 s of its first byte; otherwise the connection
  is answered with an error line and closed. A connection idle between requests is closed after
  `idle_timeout_s` (60 s).
- A line is at most `rpc.LINE_BYTES_MAX` (1 MiB): a longer one is answered with an error and the
  connection closed. So the socket holds at most 64 x (1 MiB + one 64 KiB read) of buffers.

Why `status` answers within 5 s while 200 clients hold half a line each. Half a line is waiting,
never busy, so the held connections never fill the table with busy ones: a newcomer is always
admitted, in the place of the longest waiter. `healthnode admin` connects and writes its line at
once. A Unix socket's connect completes when the connection enters the listen backlog, so the
line is already in the socket's buffer when the server accepts the connection, and the first
receive after the accept reads it. To push it out before that receive, 64 newer connections
would have to be accepted in between, but the accept loop yields to the scheduler at every
accept, and the new connection's task runs in the next pass, so only a couple can be. From then
on the connection is busy until its method returns, and then the most recent waiter while its
answer (a few hundred bytes, taken by the socket buffer at once) is written. So the request is
answered in the time its method takes, whatever the held connections do. The listen backlog
(1,024) holds a burst of a few hundred connects: a full backlog makes a client's connect fail
with EAGAIN instead of waiting.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from healthnode import logs
from healthnode.admin import rpc

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stubs shadow trio's own annotations for mypy.
    from trio_typing import TaskStatus

log = logs.get_logger("healthnode.admin")

_UCRED: Final = struct.Struct("3i")  # pid, uid, gid
BACKLOG: Final = 1024  # connects waiting for accept: a burst of scripts; the kernel caps it
RECEIVE_BYTES: Final = 64 * 1024  # one read: a status line fits, a 1 MiB batch takes 16
LAST_WORDS_TIMEOUT_S: Final = 1.0  # an error line before we close: never wait long for it
REFUSING_MAX: Final = 64  # refusals being written at once; beyond, a refusal is a bare close
# accept() failing for lack of descriptors or memory: wait for some to be given back, as
# trio.serve_listeners does, instead of spinning or stopping the node.
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                                            errno.ENOBUFS})
ACCEPT_RETRY_S: Final = 0.1


@dataclass(frozen=True, slots=True)
class AdminLimits:
    """The socket's limits (the module docstring says how they keep room for the operator)."""

    # Operators, scripts and health checks use a few; 64 leaves room for a burst of scripts,
    # and bounds the buffers (64 x 1 MiB) and descriptors a runaway client can hold.
    connections_max: int = 64
    # `healthnode admin` writes a line in microseconds; 10 s is for a person typing into nc.
    line_timeout_s: float = 10.0
    # Enough for a script that asks every few seconds on one connection; a quieter one
    # reconnects, and a forgotten one gives its descriptor back.
    idle_timeout_s: float = 60.0
    # A large answer (a block of 10,000 transactions) to a client that reads it.
    send_timeout_s: float = 10.0


@dataclass(eq=False, slots=True)
class Connection:
    """One admitted connection, as the admission rule sees it."""

    cancel_scope: trio.CancelScope
    waiting_since: float  # trio time of its accept, then of its last answer
    busy: bool = False  # a method is running for it: not to be evicted
    writing: bool = False  # an answer is being written: no error line may follow it
    evicted: bool = False


def longest_waiting(connections: set[Connection]) -> Connection | None:
    """The connection to close to make room for a new one: the one that has waited longest,
    or None when every one is busy."""
    waiting = [connection for connection in connections if not connection.busy]
    return min(waiting, key=lambda connection: connection.waiting_since, default=None)


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
    sock.listen(BACKLOG)
    return trio.SocketListener(sock)


async def serve_admin(path: Path, methods: Mapping[str, rpc.Method],
                      task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED, *,
                      limits: AdminLimits = AdminLimits()) -> None:
    """Serve `methods` on the socket at `path` until cancelled; removes the socket file after."""
    listener = await open_admin_listener(path)
    connections: set[Connection] = set()
    refusing = 0

    async def refuse(stream: trio.SocketStream, message: str) -> None:
        nonlocal refusing
        refusing += 1
        try:
            async with stream:
                await _last_words(stream, rpc.error_response(None, rpc.REFUSED, message))
        finally:
            refusing -= 1

    async def serve(stream: trio.SocketStream, connection: Connection) -> None:
        try:
            async with stream:
                with connection.cancel_scope:
                    await _serve_connection(stream, connection, methods, limits)
                if connection.evicted and not connection.writing:
                    await _last_words(stream, rpc.error_response(
                        None, rpc.REFUSED, f"admin socket: closed to make room for a new "
                        f"connection ({limits.connections_max} open, and this one had waited "
                        f"longest for a request)"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The client hung up (a timeout on its side) before our answer: its loss only.
            pass
        except Exception as error:  # a bug of ours (rpc.handle_line answers every request)
            log.error("admin_internal_error", method=None, error=type(error).__name__,
                      traceback="".join(traceback.format_exception(error)))
        finally:
            connections.discard(connection)

    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    stream = await listener.accept()
                except OSError as error:
                    if error.errno not in _ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.warning("admin_accept_failed", error=errno.errorcode[error.errno])
                    await trio.sleep(ACCEPT_RETRY_S)
                    continue
                admitted = _admission(stream, connections, limits)
                if isinstance(admitted, Connection):
                    connections.add(admitted)
                    nursery.start_soon(serve, stream, admitted)
                elif refusing < REFUSING_MAX:
                    nursery.start_soon(refuse, stream, admitted)
                else:
                    await stream.aclose()
    finally:
        path.unlink(missing_ok=True)


def _admission(stream: trio.SocketStream, connections: set[Connection],
               limits: AdminLimits) -> Connection | str:
    """A new connection's place in the table (making room if needed), or why it is refused."""
    try:
        uid = peer_uid(stream.socket)
    except OSError:
        return "admin socket: peer credentials unreadable"
    if not peer_allowed(uid):
        log.warning("admin_stranger_refused", uid=uid)
        return "admin socket: only the node's user and root are served"
    if len(connections) >= limits.connections_max:
        victim = longest_waiting(connections)
        if victim is None:
            log.info("admin_connection_refused", reason="all_busy", open=len(connections))
            return (f"admin socket busy: all {limits.connections_max} connections are running "
                    f"a request; try again")
        connections.discard(victim)
        victim.evicted = True
        victim.cancel_scope.cancel()
        log.debug("admin_connection_evicted", open=len(connections))
    return Connection(trio.CancelScope(), waiting_since=trio.current_time())


async def _serve_connection(stream: trio.SocketStream, connection: Connection,
                            methods: Mapping[str, rpc.Method], limits: AdminLimits) -> None:
    buffer = bytearray()
    scanned = 0  # bytes at the start of `buffer` known to hold no newline
    answered = False  # whether a request was answered: until then the first-line deadline holds
    line_started = 0.0  # when the partial line in `buffer` began to arrive
    while True:
        if not answered:
            deadline = connection.waiting_since + limits.line_timeout_s
        elif buffer:
            deadline = line_started + limits.line_timeout_s
        else:
            deadline = connection.waiting_since + limits.idle_timeout_s
        with trio.move_on_at(deadline) as receiving:
            data = await stream.receive_some(RECEIVE_BYTES)
        if receiving.cancelled_caught:
            if answered and not buffer:
                log.debug("admin_connection_idle_closed")
                return
            log.debug("admin_line_timeout", buffered_bytes=len(buffer))
            await _last_words(stream, rpc.error_response(
                None, rpc.INVALID_REQUEST,
                f"request line not complete within {limits.line_timeout_s:g} s"))
            return
        if not data:
            return  # the client closed; a partial line was no request
        if not buffer:
            line_started = trio.current_time()
        buffer += data
        while (end := buffer.find(b"\n", scanned)) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            scanned = 0
            if not line.strip():
                continue
            connection.busy = True
            answer = await rpc.handle_line(line, methods)
            connection.busy = False
            connection.waiting_since = trio.current_time()
            connection.writing = True
            with trio.move_on_after(limits.send_timeout_s) as sending:
                await stream.send_all(answer)
            if sending.cancelled_caught:
                log.debug("admin_send_timeout", answer_bytes=len(answer))
                return
            connection.writing = False
            answered = True
            line_started = connection.waiting_since  # what is left came with these lines
        scanned = len(buffer)
        if len(buffer) > rpc.LINE_BYTES_MAX:
            await _last_words(stream, rpc.error_response(
                None, rpc.INVALID_REQUEST, f"request longer than {rpc.LINE_BYTES_MAX} bytes"))
            return


async def _last_words(stream: trio.SocketStream, line: bytes) -> None:
    """One error line before we close, if the client takes it promptly."""
    with (trio.move_on_after(LAST_WORDS_TIMEOUT_S),
          contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError)):
        await stream.send_all(line)
