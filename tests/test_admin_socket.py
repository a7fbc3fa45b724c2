"""The admin socket: JSON-RPC lines, mode 0600, only the node's user and root, typed errors."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
from hypothesis import given
from hypothesis import strategies as st

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
    from healthnode.home import config

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


# --- rpc: limits on what a line may hold --------------------------------------------------------


def json_depth(document: Any) -> int:
    if isinstance(document, dict):
        return 1 + max(map(json_depth, document.values()), default=0)
    if isinstance(document, list):
        return 1 + max(map(json_depth, document), default=0)
    return 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text("[]{}\"\\ab\u00e9\u4e2d"),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text("[]{}\"\\x", max_size=4), children, max_size=3),
    max_leaves=40)


@given(document=JSON, most=st.integers(0, 8), ensure_ascii=st.booleans())
def test_the_nesting_scan_agrees_with_the_parsed_depth(document: Any, most: int,
                                                       ensure_ascii: bool) -> None:
    line = json.dumps(document, ensure_ascii=ensure_ascii).encode()
    assert rpc.nesting_depth_exceeds(line, most) == (json_depth(document) > most)


def test_64_levels_parse_and_65_are_refused_before_the_decoder_recurses() -> None:
    assert rpc.parse_document(b"[" * 64 + b"]" * 64) is not None
    with pytest.raises(rpc.RpcError, match="nested deeper than 64 levels") as refused:
        rpc.parse_document(b"[" * 65 + b"]" * 65)
    assert refused.value.code == rpc.PARSE_ERROR


def test_brackets_in_strings_and_escaped_quotes_do_not_count_as_nesting() -> None:
    brackets_in_a_string = json.dumps({"a": "[{" * 1000 + '\\"[' * 100}).encode()
    assert rpc.parse_document(brackets_in_a_string)["a"].startswith("[{")
    # An escaped backslash before a quote ends the string: the brackets after it count.
    assert rpc.nesting_depth_exceeds(b'["\\\\"' + b"[" * 65, 64)


def test_a_million_levels_are_refused_quickly() -> None:
    started = time.perf_counter()
    with pytest.raises(rpc.RpcError, match="nested deeper"):
        rpc.parse_document(b"[" * (rpc.LINE_BYTES_MAX - 1))
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("digits", ["9" * 20, "-" + "9" * 20, "0"])
def test_integers_of_up_to_20_digits_parse(digits: str) -> None:
    assert rpc.parse_document(digits.encode()) == int(digits)


@pytest.mark.parametrize("digits", ["1" * 21, "-" + "1" * 21, "9" * 5000])
def test_integers_of_more_than_20_digits_are_refused_while_parsing(digits: str) -> None:
    with pytest.raises(rpc.RpcError, match="integer longer than 20 digits") as refused:
        rpc.parse_document(f'{{"height": {digits}}}'.encode())
    assert refused.value.code == rpc.PARSE_ERROR


def test_a_line_that_is_not_utf8_is_a_parse_error() -> None:
    with pytest.raises(rpc.RpcError, match="not UTF-8"):
        rpc.parse_document('{"a": "é"}'.encode("utf-16"))


@pytest.mark.parametrize("params, problem", [
    ({}, "missing parameter 'n'"),
    ({"n": True}, "'n' must be int"),
    ({"n": 1.0}, "'n' must be int"),
    ({"n": 0}, "'n' must be within 1..10"),
    ({"n": 11}, "'n' must be within 1..10"),
    ({"n": 2**64}, "'n' must be within 1..10"),
])
def test_require_int_refuses_what_is_not_an_integer_in_range(params: dict[str, Any],
                                                             problem: str) -> None:
    with pytest.raises(rpc.RpcError, match=problem) as refused:
        rpc.require_int(params, "n", 1, 10)
    assert refused.value.code == rpc.INVALID_PARAMS


def test_require_int_gives_the_default_or_the_value() -> None:
    assert rpc.require_int({}, "n", 1, 10, 5) == 5
    assert rpc.require_int({"n": 10}, "n", 1, 10) == 10


@pytest.mark.parametrize("value, problem", [
    ("a\x00b", "NUL"),
    ("a\ud800b", "lone surrogate"),
    ("x" * 11, "longer than 10 characters"),
    (5, "must be str"),
])
def test_require_text_refuses_what_cannot_become_a_path(value: Any, problem: str) -> None:
    with pytest.raises(rpc.RpcError, match=problem) as refused:
        rpc.require_text({"s": value}, "s", 10)
    assert refused.value.code == rpc.INVALID_PARAMS


# --- rpc: one catch-all for our own bugs ----------------------------------------------------


async def test_a_method_that_raises_is_an_internal_error_logged_with_its_traceback() -> None:
    async def broken(params: dict[str, Any]) -> Any:
        return {}["missing"]

    with structlog.testing.capture_logs() as events:
        answer = json.loads(await rpc.handle_line(
            b'{"jsonrpc":"2.0","id":3,"method":"broken"}', {"broken": broken}))
    assert answer["id"] == 3
    assert answer["error"]["code"] == rpc.INTERNAL_ERROR
    assert "'broken'" in answer["error"]["message"] and "KeyError" in answer["error"]["message"]
    [event] = [e for e in events if e["event"] == "admin_internal_error"]
    assert event["method"] == "broken" and event["error"] == "KeyError"
    assert event["log_level"] == "error"
    assert "return {}[\"missing\"]" in event["traceback"]


async def test_an_answer_that_is_not_json_is_an_internal_error() -> None:
    async def unserializable(params: dict[str, Any]) -> Any:
        return {b"bytes": 1}

    with structlog.testing.capture_logs():
        answer = json.loads(await rpc.handle_line(
            b'{"jsonrpc":"2.0","id":4,"method":"x"}', {"x": unserializable}))
    assert answer["error"]["code"] == rpc.INTERNAL_ERROR


# --- server: timeouts, the connection limit, and room for the operator ------------------------

FAST = server.AdminLimits(connections_max=2, line_timeout_s=0.3, idle_timeout_s=0.6,
                          send_timeout_s=0.3)
ECHO_UP = b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"up"}}\n'


async def read_all(stream: trio.SocketStream, timeout_s: float = 5) -> bytes:
    """Everything the server writes until it closes (fails if it does not within timeout_s)."""
    data = b""
    with trio.fail_after(timeout_s):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def read_line(stream: trio.SocketStream) -> dict[str, Any]:
    data = b""
    with trio.fail_after(5):
        while not data.endswith(b"\n"):
            data += await stream.receive_some(65536)
    document: dict[str, Any] = json.loads(data)
    return document


async def start_server(nursery: trio.Nursery, path: Path,
                       methods: dict[str, rpc.Method] = METHODS,
                       limits: server.AdminLimits = FAST) -> None:
    await nursery.start(partial(server.serve_admin, path, methods, limits=limits))


async def test_a_half_line_is_answered_with_an_error_after_the_line_timeout(
        tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path)
        stream = await trio.open_unix_socket(str(path))
        await stream.send_all(b'{"jsonrpc":"2.0","id":1,"met')
        started = trio.current_time()
        answer = json.loads(await read_all(stream))
        assert 0.25 <= trio.current_time() - started < 2
        assert answer["error"]["code"] == rpc.INVALID_REQUEST
        assert "not complete within 0.3 s" in answer["error"]["message"]
        nursery.cancel_scope.cancel()


async def test_a_connection_that_sends_nothing_is_closed_after_the_line_timeout(
        tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path)
        stream = await trio.open_unix_socket(str(path))
        answer = json.loads(await read_all(stream))
        assert "not complete within" in answer["error"]["message"]
        nursery.cancel_scope.cancel()


async def test_an_idle_connection_is_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path)
        stream = await trio.open_unix_socket(str(path))
        await stream.send_all(ECHO_UP)
        assert (await read_line(stream))["result"] == {"echo": "up"}
        await trio.sleep(0.4)  # longer than a line may take, shorter than idle: still open
        await stream.send_all(ECHO_UP)
        assert (await read_line(stream))["result"] == {"echo": "up"}
        started = trio.current_time()
        assert await read_all(stream) == b""  # closed without a word
        assert 0.5 <= trio.current_time() - started < 2
        nursery.cancel_scope.cancel()


async def test_a_new_connection_takes_the_place_of_the_one_waiting_longest(
        tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path, limits=server.AdminLimits(connections_max=2))
        oldest = await trio.open_unix_socket(str(path))
        await oldest.send_all(b'{"jsonrpc"')
        await trio.sleep(0.05)
        newer = await trio.open_unix_socket(str(path))
        await newer.send_all(b'{"jsonrpc"')
        await trio.sleep(0.05)
        operator = await trio.open_unix_socket(str(path))
        await operator.send_all(ECHO_UP)
        assert (await read_line(operator))["result"] == {"echo": "up"}
        evicted = json.loads(await read_all(oldest))
        assert evicted["error"]["code"] == rpc.REFUSED
        assert "closed to make room" in evicted["error"]["message"]
        await newer.send_all(b':"2.0","id":2,"method":"echo","params":{"text":"me too"}}\n')
        assert (await read_line(newer))["result"] == {"echo": "me too"}
        nursery.cancel_scope.cancel()


async def test_a_newcomer_is_refused_only_when_every_connection_runs_a_request(
        tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    release = trio.Event()
    running = 0

    async def hold(params: dict[str, Any]) -> str:
        nonlocal running
        running += 1
        await release.wait()
        return "done"

    hold_line = b'{"jsonrpc":"2.0","id":1,"method":"hold"}\n'
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path, {**METHODS, "hold": hold},
                           server.AdminLimits(connections_max=2))
        busy = [await trio.open_unix_socket(str(path)) for _ in range(2)]
        for stream in busy:
            await stream.send_all(hold_line)
        while running < 2:
            await trio.sleep(0.01)
        newcomer = await trio.open_unix_socket(str(path))
        refused = json.loads(await read_all(newcomer))
        assert refused["error"]["code"] == rpc.REFUSED
        assert "busy" in refused["error"]["message"]
        release.set()
        for stream in busy:
            assert (await read_line(stream))["result"] == "done"
        after = await trio.open_unix_socket(str(path))
        await after.send_all(ECHO_UP)
        assert (await read_line(after))["result"] == {"echo": "up"}
        nursery.cancel_scope.cancel()


async def test_a_client_that_does_not_read_its_answer_is_closed_after_the_send_timeout(
        tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"

    async def large(params: dict[str, Any]) -> str:
        return "x" * (8 * 1024 * 1024)  # far more than a socket buffer holds

    async with trio.open_nursery() as nursery:
        await start_server(nursery, path, {**METHODS, "large": large})
        stream = await trio.open_unix_socket(str(path))
        await stream.send_all(b'{"jsonrpc":"2.0","id":1,"method":"large"}\n')
        await trio.sleep(1)  # not reading: the server's send times out after 0.3 s
        data = await read_all(stream)
        assert 0 < len(data) < 8 * 1024 * 1024  # a part, then the end
        nursery.cancel_scope.cancel()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_the_10000th_connection_is_served_and_every_descriptor_is_given_back(
        tmp_path: Path) -> None:
    path = tmp_path / "admin.sock"
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path, limits=server.AdminLimits())
        before = open_fds()
        for index in range(10_000):
            stream = await trio.open_unix_socket(str(path))
            if index % 2:
                await stream.send_all(ECHO_UP)
                assert (await read_line(stream))["result"] == {"echo": "up"}
            else:
                await stream.send_all(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"t')
            await stream.aclose()  # half of them hang up mid-line
        with trio.fail_after(5):
            while open_fds() > before:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
