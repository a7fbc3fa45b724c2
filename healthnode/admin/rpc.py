"""JSON-RPC 2.0 for the operator's admin socket, sans-IO: one JSON object per line.

`handle_line` turns one request line into one response line through a table of methods. Every
request gets an answer, and nothing a client sends can raise out of it:

- Malformed, oversized or unknown requests are JSON-RPC errors naming the problem: -32700 parse
  error, -32600 invalid request, -32601 unknown method, -32602 invalid params.
- Before `json.loads` sees a line, it is checked to be UTF-8 and at most `DEPTH_MAX` arrays and
  objects deep (`nesting_depth_exceeds`, a scan of the bytes outside strings), so the decoder
  never recurses deeper than that. Integers longer than `INT_DIGITS_MAX` digits are refused while
  parsing (a `parse_int` hook), before Python's int conversion, which costs time quadratic in the
  digits and refuses more than 4,300 of them with a ValueError.
- Methods check their parameters with `require`, `require_int` (a range for every integer) and
  `require_text` (no NUL, valid Unicode, a length), and answer a bad one with INVALID_PARAMS.
- A method that raises anything but RpcError has a bug of ours. It is logged loudly
  (`admin_internal_error`, with the method, the exception type and the traceback) and answered
  with -32603 internal error. Elsewhere a bug of ours stops the node (docs/architecture.md,
  rule 5); here one operator request must not take consensus down with it, and the log still
  shows the bug.

The transport (a Unix socket, mode 0600, that admits only the daemon's own user and root, with its
connection limit and timeouts) is in `admin/server.py`.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import EllipsisType
from typing import Any, Final

from healthnode import crypto, limits, logs

log = logs.get_logger("healthnode.admin")

# Requests are small, except a batch of submitted transactions: 1,000 anchors in hex fit.
LINE_BYTES_MAX: Final = 1024 * 1024
# The methods' parameters are at most two levels deep (a list of roles, a list of transactions);
# 64 leaves room for any client's envelope and stays far below Python's recursion limit (1,000).
DEPTH_MAX: Final = 64
# 20 digits hold every 64-bit integer (2**64 is 18446744073709551616), so a height just out of
# range still parses and is answered by the method's range check, naming the parameter.
INT_DIGITS_MAX: Final = 20

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


_NOT_BRACKETS: Final = bytes(byte for byte in range(256) if byte not in b"[]{}")
_OPENING: Final = frozenset(b"[{")


def nesting_depth_exceeds(line: bytes, most: int) -> bool:
    """Whether the arrays and objects of a UTF-8 JSON `line` nest deeper than `most`.

    Brackets inside strings do not count. In UTF-8 every byte of a multi-byte character is
    >= 0x80, so the ASCII quotes, backslashes and brackets found byte by byte are the text's
    own. Escapes are dropped first, escaped backslashes, then escaped quotes, which leaves exactly
    the quotes that open and close strings. On text that is not JSON the count is exact up to
    the first byte the decoder refuses, which is as far as the decoder would recurse. The scan
    runs at C speed, except the last loop over brackets, which only a line with more than `most`
    of them reaches (no method needs that): about 30 ms for a 1 MiB line of brackets.
    """
    if b"\\" in line:
        line = line.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(line.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= most:
        return False
    depth = 0
    for byte in brackets:
        if byte in _OPENING:
            depth += 1
            if depth > most:
                return True
        else:
            depth -= 1
    return False


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > INT_DIGITS_MAX:
        raise RpcError(PARSE_ERROR, f"request has an integer longer than {INT_DIGITS_MAX} "
                                    f"digits")
    return int(digits)


def parse_document(line: bytes) -> Any:
    """One request line as JSON, or RpcError naming why it is not taken."""
    if len(line) > LINE_BYTES_MAX:
        raise RpcError(INVALID_REQUEST, f"request longer than {LINE_BYTES_MAX} bytes")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise RpcError(PARSE_ERROR, "request is not UTF-8") from None
    if nesting_depth_exceeds(line, DEPTH_MAX):
        raise RpcError(PARSE_ERROR, f"request nested deeper than {DEPTH_MAX} levels")
    try:
        return json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError:
        raise RpcError(PARSE_ERROR, "request is not JSON") from None


def parse_request(line: bytes) -> Request:
    """One request line into a Request, or RpcError naming what is wrong."""
    return request_of(parse_document(line))


def request_id_of(document: Any) -> int | str | None:
    """The id to answer with: the request's own when it is a valid one, else null."""
    if isinstance(document, dict) and type(document.get("id")) in (int, str):
        request_id: int | str = document["id"]
        return request_id
    return None


def request_of(document: Any) -> Request:
    """A parsed request line into a Request, or RpcError naming what is wrong."""
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


def error_response(request_id: Any, code: int, message: str) -> bytes:
    return _line({"jsonrpc": "2.0", "id": request_id,
                  "error": {"code": code, "message": message}})


def _line(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


async def handle_line(line: bytes, methods: Mapping[str, Method]) -> bytes:
    """Answer one request line with one response line; never raises (but trio.Cancelled)."""
    request_id: int | str | None = None
    method_name: str | None = None
    try:
        document = parse_document(line)
        request_id = request_id_of(document)
        request = request_of(document)
        method_name = request.method
        method = methods.get(request.method)
        if method is None:
            known = ", ".join(sorted(methods))
            return error_response(request_id, METHOD_NOT_FOUND,
                                  f"unknown method {request.method[:64]!r} (known: {known})")
        result = await method(request.params)
        return _line({"jsonrpc": "2.0", "id": request_id, "result": result})
    except RpcError as error:
        return error_response(request_id, error.code, error.message)
    except Exception as error:  # a bug of ours: see the module docstring
        method_shown = None if method_name is None else method_name[:64]
        log.error("admin_internal_error", method=method_shown, error=type(error).__name__,
                  traceback="".join(traceback.format_exception(error)))
        return error_response(request_id, INTERNAL_ERROR,
                              f"internal error in {method_shown!r}: {type(error).__name__} "
                              f"(a bug; the node log has its traceback)")


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


def require_int(params: dict[str, Any], name: str, minimum: int, maximum: int,
                default: int | EllipsisType = ...) -> int:
    """A named integer within minimum..maximum (true and false are not integers), or
    INVALID_PARAMS naming it and the range."""
    value: int = require(params, name, int, default)
    if name in params and not minimum <= value <= maximum:
        raise RpcError(INVALID_PARAMS,
                       f"parameter {name!r} must be within {minimum}..{maximum}")
    return value


def require_height(params: dict[str, Any], name: str = "height") -> int:
    """A block height, 1..2**63-1: the store keys heights in 8 bytes, and every JSON client
    can hold a signed 64-bit integer."""
    return require_int(params, name, 1, limits.HEIGHT_MAX)


def require_text(params: dict[str, Any], name: str, chars_max: int,
                 default: str | EllipsisType = ...) -> str:
    """A named string of at most `chars_max` characters that can become a path, a key or hex:
    no NUL (the OS refuses it in a path) and no lone surrogate (JSON's \\ud800 escape, which
    has no UTF-8 form), or INVALID_PARAMS naming it."""
    value: str = require(params, name, str, default)
    if name not in params:
        return value
    if len(value) > chars_max:
        raise RpcError(INVALID_PARAMS, f"parameter {name!r} is longer than {chars_max} "
                                       f"characters")
    if "\0" in value:
        raise RpcError(INVALID_PARAMS, f"parameter {name!r} must not contain a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RpcError(INVALID_PARAMS, f"parameter {name!r} is not valid Unicode "
                                       f"(a lone surrogate)") from None
    return value


def require_none(params: dict[str, Any]) -> None:
    """No parameters, or INVALID_PARAMS naming the first one."""
    if params:
        raise RpcError(INVALID_PARAMS,
                       f"unexpected parameter {sorted(params)[0]!r} (this method takes none)")


def require_hex(params: dict[str, Any], name: str, size: int, what: str) -> bytes:
    """A named parameter of exactly `size` bytes in hex, or INVALID_PARAMS naming it and `what`
    it must be."""
    text: str = require(params, name, str)
    try:  # bytes.fromhex refuses NUL and every other non-hex character with a ValueError
        raw = bytes.fromhex(text) if len(text) == 2 * size else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise RpcError(INVALID_PARAMS,
                       f"parameter {name!r} must be {what} ({2 * size} hex characters)")
    return raw


def require_public_key(params: dict[str, Any], name: str) -> bytes:
    return require_hex(params, name, crypto.PUBLIC_KEY_BYTES, "a public key")


def require_hash(params: dict[str, Any], name: str) -> bytes:
    return require_hex(params, name, crypto.HASH_BYTES, "a hash")


def require_name(params: dict[str, Any], name: str) -> str:
    """A display name (a hospital's, a provider's): 1..NAME_CHARS_MAX printable characters."""
    value: str = require(params, name, str)
    if not 1 <= len(value) <= limits.NAME_CHARS_MAX or not value.isprintable():
        raise RpcError(INVALID_PARAMS, f"parameter {name!r} must be 1.."
                                       f"{limits.NAME_CHARS_MAX} printable characters")
    return value


def require_choice(params: dict[str, Any], name: str, choices: frozenset[str]) -> str:
    """One of `choices`, or INVALID_PARAMS listing them."""
    value: str = require(params, name, str)
    if value not in choices:
        raise RpcError(INVALID_PARAMS,
                       f"parameter {name!r} must be one of: {', '.join(sorted(choices))}")
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
