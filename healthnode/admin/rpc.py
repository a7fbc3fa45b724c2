"""JSON-RPC 2.0 for the operator's admin socket, sans-IO: one JSON object per line.

`handle_line` turns one request line into one response line through a table of methods. Every
malformed, oversized or unknown request becomes a JSON-RPC error object naming the problem
(-32700 parse error, -32600 invalid request, -32601 unknown method, -32602 invalid params), never
an exception that could stop the server. The transport (a Unix socket, mode 0600, that admits only
the daemon's own user and root) is in `admin/server.py`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

# Requests are small, except a batch of submitted transactions: 1,000 anchors in hex fit.
LINE_BYTES_MAX: Final = 1024 * 1024

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
REFUSED: Final = -32000  # the method ran and refused (e.g. a transaction the ledger rejects)


class RpcError(Exception):
    """Raised by a method to answer with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Method = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Request:
    id: int | str | None
    method: str
    params: dict[str, Any]


def parse_request(line: bytes) -> Request:
    """One request line into a Request, or RpcError naming what is wrong."""
    if len(line) > LINE_BYTES_MAX:
        raise RpcError(INVALID_REQUEST, f"request longer than {LINE_BYTES_MAX} bytes")
    try:
        document = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RpcError(PARSE_ERROR, "request is not JSON") from None
    if not isinstance(document, dict):
        raise RpcError(INVALID_REQUEST, "request must be a JSON object")
    if document.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'request must have "jsonrpc": "2.0"')
    method = document.get("method")
    if not isinstance(method, str) or not method:
        raise RpcError(INVALID_REQUEST, '"method" must be a non-empty string')
    params = document.get("params", {})
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, '"params" must be an object of named parameters')
    request_id = document.get("id")
    if request_id is not None and type(request_id) not in (int, str):
        raise RpcError(INVALID_REQUEST, '"id" must be a number or a string')
    return Request(request_id, method, params)


def _request_id(line: bytes) -> Any:
    try:
        document = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(document, dict) and type(document.get("id")) in (int, str):
        return document["id"]
    return None


def error_response(request_id: Any, code: int, message: str) -> bytes:
    return _line({"jsonrpc": "2.0", "id": request_id,
                  "error": {"code": code, "message": message}})


def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


async def handle_line(line: bytes, methods: Mapping[str, Method]) -> bytes:
    """Answer one request line with one response line."""
    try:
        request = parse_request(line)
    except RpcError as error:
        return error_response(_request_id(line[:LINE_BYTES_MAX]), error.code, error.message)
    method = methods.get(request.method)
    if method is None:
        known = ", ".join(sorted(methods))
        return error_response(request.id, METHOD_NOT_FOUND,
                              f"unknown method {request.method[:64]!r} (known: {known})")
    try:
        result = await method(request.params)
    except RpcError as error:
        return error_response(request.id, error.code, error.message)
    return _line({"jsonrpc": "2.0", "id": request.id, "result": result})


def require(params: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    """A named parameter of the given JSON type, or INVALID_PARAMS naming it."""
    if name not in params:
        if default is ...:
            raise RpcError(INVALID_PARAMS, f"missing parameter {name!r}")
        return default
    value = params[name]
    if type(value) is not kind:
        raise RpcError(INVALID_PARAMS, f"parameter {name!r} must be {kind.__name__}")
    return value


def parse_cli_params(pairs: list[str]) -> dict[str, Any]:
    """`--param k=v` values: JSON when they parse as JSON (numbers, lists), strings otherwise."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {pair!r} must look like name=value")
        try:
            params[name] = json.loads(text)
        except json.JSONDecodeError:
            params[name] = text
    return params
