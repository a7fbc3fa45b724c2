"""The admin socket: JSON-RPC lines, mode 0600, only the node's user and root, typed errors."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import trio

from healthnode.admin import client, rpc, server


async def echo(params: dict[str, Any]) -> Any:
    return {"echo": rpc.require(params, "text", str)}


async def refuse(params: dict[str, Any]) -> Any:
    raise rpc.RpcError(rpc.REFUSED, "not today")


METHODS = {"echo": echo, "refuse": refuse}


def raw_exchange(path: Path, payload: bytes) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        data = b""
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except BrokenPipeError:  # the server stopped reading an oversized request: fine
            pass
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    return [json.loads(line) for line in data.splitlines()]


async def test_requests_are_answered_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_admin, path, METHODS)
        assert path.stat().st_mode & 0o777 == 0o600
        answers = await trio.to_thread.run_sync(raw_exchange, path, (
            b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"hi"}}\n'
            b"not json\n"
            b'{"jsonrpc":"2.0","id":2,"method":"nope"}\n'
            b'{"jsonrpc":"2.0","id":3,"method":"echo","params":{"text":5}}\n'
            b'{"jsonrpc":"2.0","id":4,"method":"echo","params":[1]}\n'
            b'{"jsonrpc":"2.0","id":5,"method":"refuse"}\n'
            b'[1,2]\n'
        ))
        nursery.cancel_scope.cancel()
    assert answers[0] == {"jsonrpc": "2.0", "id": 1, "result": {"echo": "hi"}}
    assert answers[1]["error"]["code"] == rpc.PARSE_ERROR
    assert answers[2]["error"]["code"] == rpc.METHOD_NOT_FOUND
    assert "unknown method 'nope'" in answers[2]["error"]["message"]
    assert answers[3]["error"] == {"code": rpc.INVALID_PARAMS,
                                   "message": "parameter 'text' must be str"}
    assert answers[4]["error"]["code"] == rpc.INVALID_PARAMS
    assert answers[5]["error"] == {"code": rpc.REFUSED, "message": "not today"}
    assert answers[6]["error"]["code"] == rpc.INVALID_REQUEST
    assert not path.exists()


async def test_an_oversized_request_ends_the_connection_and_the_server_goes_on(
        tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_admin, path, METHODS)
        huge = b"x" * (rpc.LINE_BYTES_MAX * 2)
        answers = await trio.to_thread.run_sync(raw_exchange, path, huge)
        assert answers[-1]["error"]["code"] == rpc.INVALID_REQUEST
        result = await trio.to_thread.run_sync(client.call, path, "echo", {"text": "still up"})
        assert result == {"echo": "still up"}
        nursery.cancel_scope.cancel()


async def test_client_reports_rpc_errors_as_admin_errors(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_admin, path, METHODS)
        with pytest.raises(client.AdminError, match="refuse: not today"):
            await trio.to_thread.run_sync(client.call, path, "refuse", {})
        nursery.cancel_scope.cancel()


def test_client_without_a_running_node_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(client.AdminError, match="is the node running"):
        client.call(tmp_path / "admin.sock", "status")


_AS_NOBODY = """
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("permission-denied"); sys.exit(0)
try:
    s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"x"}}\\n')
except BrokenPipeError:
    pass  # the server may refuse and close before our request is written
print(s.recv(65536).decode().strip())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
async def test_other_users_are_refused_by_file_mode_and_by_peer_credentials(
        tmp_path: Path) -> None:
    # A directory every user can traverse, so only the socket's own mode and the peer
    # credential check stand in the way (pytest's tmp_path is private to root).
    shared = Path(tempfile.mkdtemp(prefix="healthnode-admin-", dir="/tmp"))
    shared.chmod(0o755)
    path = shared / "admin.sock"

    def as_nobody() -> str:
        done = subprocess.run([sys.executable, "-c", _AS_NOBODY, str(path)], check=False,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_admin, path, METHODS)
        assert await trio.to_thread.run_sync(as_nobody) == "permission-denied"
        # Even if the mode were loosened, the peer-credential check refuses the stranger.
        path.chmod(0o666)
        answer = json.loads(await trio.to_thread.run_sync(as_nobody))
        assert answer["error"]["code"] == rpc.REFUSED
        assert "only the node's user and root" in answer["error"]["message"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("pairs, expected", [
    (["height=5"], {"height": 5}),
    (["ids=[1,2]"], {"ids": [1, 2]}),
    (["path=/tmp/backup"], {"path": "/tmp/backup"}),
    (["flag=true"], {"flag": True}),
    (["name=node 1"], {"name": "node 1"}),
])
def test_cli_params_are_json_when_they_parse(pairs: list[str], expected: dict[str, Any]) -> None:
    assert rpc.parse_cli_params(pairs) == expected


def test_cli_param_without_equals_is_an_error() -> None:
    with pytest.raises(ValueError, match="name=value"):
        rpc.parse_cli_params(["height"])


async def test_cli_admin_calls_the_socket_named_in_the_config(tmp_path: Path) -> None:
    from healthnode import config

    config.write_config(config.NodeConfig(), tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_admin, tmp_path / "admin.sock", METHODS)
        done = await trio.run_process(
            [sys.executable, "-m", "healthnode", "admin", "--home", str(tmp_path), "echo",
             "--param", "text=hello world"], capture_stdout=True, capture_stderr=True)
        assert json.loads(done.stdout) == {"echo": "hello world"}
        refused = await trio.run_process(
            [sys.executable, "-m", "healthnode", "admin", "--home", str(tmp_path), "echo",
             "--param", "text=5"], capture_stdout=True, capture_stderr=True, check=False)
        assert refused.returncode == 1
        assert b"parameter 'text' must be str" in refused.stderr
        nursery.cancel_scope.cancel()


async def test_a_client_that_hangs_up_before_the_answer_does_not_stop_the_server(
        tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"

    async def slow(params: dict[str, Any]) -> str:
        await trio.sleep(0.3)  # the client is gone by the time the answer is written
        return "late"

    def hang_up() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"slow","params":{}}\n' * 50)

    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_admin, path, {**METHODS, "slow": slow})
        for _ in range(3):
            await trio.to_thread.run_sync(hang_up)
        await trio.sleep(1)
        result = await trio.to_thread.run_sync(client.call, path, "echo", {"text": "still up"})
        assert result == {"echo": "still up"}
        nursery.cancel_scope.cancel()
