"""A blocking admin-socket client for the CLI: one request, one response line."""

from __future__ import annotations

import itertools
import json
import socket
from pathlib import Path
from typing import Any, Final

from healthnode.admin import rpc
from healthnode.errors import HealthnodeError

RESPONSE_BYTES_MAX: Final = 64 * 1024 * 1024  # a block with 10,000 transactions as JSON
# Longer than any wait of the server (a transaction's finality: node/operator.py,
# WAIT_FINAL_TIMEOUT_S, 30 s), so that the server's answer, or its explanation, always arrives
# first (tests/test_admin_operator.py checks the order).
TIMEOUT_S_DEFAULT: Final = 60.0
_ids = itertools.count(1)


class AdminError(HealthnodeError):
    """The admin socket could not be reached, or answered with an error."""


def call(socket_path: Path, method: str, params: dict[str, Any] | None = None,
         timeout_s: float = TIMEOUT_S_DEFAULT) -> Any:
    request = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params or {}}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(socket_path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            response = _read_line(sock)
    except FileNotFoundError:
        raise AdminError(f"{socket_path}: no admin socket (is the node running?)") from None
    except PermissionError:
        raise AdminError(f"{socket_path}: permission denied (run as the node's user)") from None
    except TimeoutError:
        raise AdminError(f"{socket_path}: {method}: no answer within {timeout_s:g} s "
                         f"(--timeout)") from None
    except (ConnectionError, OSError) as error:
        raise AdminError(f"{socket_path}: {error}") from None
    try:
        document = json.loads(response)
    except json.JSONDecodeError:
        raise AdminError("admin socket answered with something that is not JSON") from None
    if "error" in document:
        problem = document["error"]
        raise AdminError(f"{method}: {problem.get('message')} (code {problem.get('code')})")
    return document.get("result")


def _read_line(sock: socket.socket) -> bytes:
    chunks = bytearray()
    while not chunks.endswith(b"\n"):
        data = sock.recv(65536)
        if not data:
            break
        chunks += data
        if len(chunks) > RESPONSE_BYTES_MAX:
            raise AdminError(f"admin response longer than {RESPONSE_BYTES_MAX} bytes")
    if not chunks:
        raise AdminError("admin socket closed without answering")
    return bytes(chunks)


__all__ = ["AdminError", "call", "rpc"]
