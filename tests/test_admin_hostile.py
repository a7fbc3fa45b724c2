"""The admin socket of a real `healthnode run` process, tried as a hostile operator script would:
every malformed request is answered with a JSON-RPC error naming the problem, and afterwards the
node still answers `status` and its process is alive. Half lines held open by 200 clients do not
lock the operator out. One node serves the whole module."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from healthnode.admin import client, rpc
from tests.cluster import Cluster, wait_for

HEIGHT_MAX = 2**63 - 1


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("hostile") / "net", nodes=1)
    cluster.start_all()
    try:
        yield cluster
        log = cluster.log_tail(0, 10_000_000)
        # Hostile input is theirs, never a bug of ours: no catch-all fired, nothing escaped.
        assert "admin_internal_error" not in log and "Traceback" not in log, log[-3000:]
    finally:
        cluster.close()


def socket_path(node: Cluster) -> Path:
    return node.homes[0] / "admin.sock"


def exchange(node: Cluster, line: bytes) -> dict[str, Any]:
    """One raw request line and its answer line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(socket_path(node)))
        sock.sendall(line + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, f"the socket closed without answering; got {answer!r}"
            answer += chunk
    document: dict[str, Any] = json.loads(answer)
    return document


def request(method: str, params_json: str) -> bytes:
    return f'{{"jsonrpc":"2.0","id":7,"method":"{method}","params":{params_json}}}'.encode()


def assert_node_lives(node: Cluster) -> None:
    assert node.nodes[0].running, node.log_tail(0)
    assert node.status(0)["node"] == "node0"


def assert_error(answer: dict[str, Any], code: int, *named: str) -> None:
    assert "result" not in answer, answer
    assert answer["error"]["code"] == code, answer
    for text in named:
        assert text in answer["error"]["message"], answer


# --- the requests that used to end the node ---------------------------------------------------


def test_json_nested_100_000_levels_deep_is_a_parse_error(node: Cluster) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    answer = exchange(node, request("status", f'{{"x":{nested}}}'))
    assert_error(answer, rpc.PARSE_ERROR, f"nested deeper than {rpc.DEPTH_MAX} levels")
    assert answer["id"] is None  # the request was never parsed, so its id is unknown
    assert_node_lives(node)


def test_an_unclosed_nesting_of_100_000_objects_is_a_parse_error(node: Cluster) -> None:
    answer = exchange(node, b'{"a":' * 100_000)
    assert_error(answer, rpc.PARSE_ERROR, "nested deeper")
    assert_node_lives(node)


def test_a_5000_digit_integer_is_a_parse_error(node: Cluster) -> None:
    answer = exchange(node, request("block", f'{{"height":{"9" * 5000}}}'))
    assert_error(answer, rpc.PARSE_ERROR, f"integer longer than {rpc.INT_DIGITS_MAX} digits")
    assert_node_lives(node)


def test_a_5000_digit_id_is_a_parse_error(node: Cluster) -> None:
    line = f'{{"jsonrpc":"2.0","id":-{"1" * 5000},"method":"status"}}'.encode()
    assert_error(exchange(node, line), rpc.PARSE_ERROR, "integer longer")
    assert_node_lives(node)


@pytest.mark.parametrize("method", ["block", "certificate"])
@pytest.mark.parametrize("height", [0, -1, 2**63, 2**64, -(2**64)])
def test_a_height_out_of_range_is_invalid_params(node: Cluster, method: str,
                                                 height: int) -> None:
    answer = exchange(node, request(method, f'{{"height":{height}}}'))
    assert_error(answer, rpc.INVALID_PARAMS, "'height'", f"1..{HEIGHT_MAX}")
    assert_node_lives(node)


@pytest.mark.parametrize("method", ["block", "certificate"])
def test_a_height_of_31_digits_is_refused_while_parsing(node: Cluster, method: str) -> None:
    answer = exchange(node, request(method, f'{{"height":{10**30}}}'))
    assert_error(answer, rpc.PARSE_ERROR, "integer longer")
    assert_node_lives(node)


@pytest.mark.parametrize("method", ["block", "certificate"])
@pytest.mark.parametrize("height", ["true", '"1"', "1.0", "null"])
def test_a_height_that_is_no_integer_is_invalid_params(node: Cluster, method: str,
                                                       height: str) -> None:
    answer = exchange(node, request(method, f'{{"height":{height}}}'))
    assert_error(answer, rpc.INVALID_PARAMS, "'height'")


@pytest.mark.parametrize("method", ["block", "certificate"])
def test_the_highest_height_is_in_range_and_not_there_yet(node: Cluster, method: str) -> None:
    assert node.admin(0, method, height=HEIGHT_MAX) is None


@pytest.mark.parametrize("bad_dir, named", [
    ("/tmp/back\u0000up", "NUL"),
    ("/tmp/back\ud800up", "lone surrogate"),
    ("/tmp/" + "x" * 300 + "/backup", "'dir'"),  # a name longer than 255 bytes
    ("/" + "x/" * 2100, "longer than 4095"),
])
def test_a_backup_dir_that_no_path_can_be_is_invalid_params(node: Cluster, bad_dir: str,
                                                            named: str) -> None:
    answer = exchange(node, request("backup", json.dumps({"dir": bad_dir})))
    assert_error(answer, rpc.INVALID_PARAMS, "'dir'", named)
    assert_node_lives(node)


@pytest.mark.parametrize("method, params, named", [
    ("tx", {"tx_hash": "ab\u0000" * 20}, "tx_hash"),
    ("tx", {"tx_hash": "ab"}, "tx_hash"),
    ("tx", {"tx_hash": "\ud800" * 64}, "tx_hash"),
    ("submit_tx", {"tx": "ab\u0000cd"}, "tx"),
    ("audit", {"patient": "\u0000" * 64}, "patient"),
    ("validator_discard", {"tx_hash": "ab" * 33}, "tx_hash"),
    ("mempool", {"limit": True}, "limit"),
    ("mempool", {"limit": 2**64}, "limit"),
    ("evidence", {"limit": -(2**63)}, "limit"),
    ("audit", {"patient": "ab" * 32, "limit": 10**19}, "limit"),
])
def test_other_hostile_parameters_are_invalid_params(node: Cluster, method: str,
                                                     params: dict[str, Any], named: str) -> None:
    answer = exchange(node, request(method, json.dumps(params)))
    assert_error(answer, rpc.INVALID_PARAMS, named)
    assert_node_lives(node)


@pytest.mark.parametrize("line", [
    b"\xff\xfe{}",  # not UTF-8
    b'{"jsonrpc":"2.0","method":"status","id":1.5}',
    b"[" * 64 + b"]" * 64,  # as deep as allowed, and no request
    b"",
    b"null",
])
def test_malformed_requests_are_answered(node: Cluster, line: bytes) -> None:
    if not line:  # a blank line is skipped; the next one is answered
        line = b'\n{"jsonrpc":"2.0","id":1,"method":"status"}'
        assert exchange(node, line)["result"]["node"] == "node0"
        return
    answer = exchange(node, line)
    assert answer["error"]["code"] in (rpc.PARSE_ERROR, rpc.INVALID_REQUEST), answer
    assert_node_lives(node)


# --- many clients ------------------------------------------------------------------------------


def test_status_answers_within_5_s_while_200_clients_hold_half_a_line(node: Cluster) -> None:
    half_line = b'{"jsonrpc":"2.0","id":1,"method":"sta'
    held: list[socket.socket] = []
    try:
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held.append(sock)
            sock.connect(str(socket_path(node)))
            sock.sendall(half_line)
        started = time.monotonic()
        result = client.call(socket_path(node), "status", timeout_s=5)
        assert time.monotonic() - started < 5
        assert result["node"] == "node0"
        # The socket kept at most 64 of them: the others were closed with an error line.
        received: dict[int, bytes] = {}
        wait_for(lambda: sum(closed_with_error(sock, received) for sock in held) >= 200 - 64, 5,
                 "the server to close all but 64 of the held connections")
    finally:
        for sock in held:
            sock.close()
    assert_node_lives(node)


def closed_with_error(sock: socket.socket, received: dict[int, bytes]) -> bool:
    """Whether the server has written an error line to `sock` and closed it (never blocks;
    what was read so far is kept in `received`)."""
    sock.setblocking(False)
    data = received.get(sock.fileno(), b"")
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except BlockingIOError:
        return False  # still open
    finally:
        received[sock.fileno()] = data
    return b'"error"' in data


def test_a_hundred_requests_on_new_connections_after_the_flood_all_answer(
        node: Cluster) -> None:
    for _ in range(100):
        assert client.call(socket_path(node), "status", timeout_s=5)["node"] == "node0"
