"""Canonical msgpack: the one byte encoding of every healthnode message.

Theory of operation
-------------------
Every message is a msgpack array `[kind, version, ...fields]` whose leaves are ints, byte strings,
UTF-8 strings, nil and nested arrays: no maps (their key order is not canonical), no floats, no
extension types. For a given value there is exactly one encoding, the one msgpack-python's packer
produces (smallest integer and length forms). Decoding therefore ends with a check that the decoded
value re-encodes to exactly the input bytes, which rejects every alternative encoding, and so a hash
of the bytes identifies the message and a signature over them cannot be replayed in another form.

`unpack` is the only place raw peer bytes meet msgpack. It bounds the input before parsing and
converts every failure into a `CodecError` subclass that names the problem. `protocol/schema.py`
checks the shape of the decoded value.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import msgpack

# A decoded wire value: int | bytes | str | None | list of wire values.
Wire = Any


class CodecError(ValueError):
    """Base of every decoding failure: the input is dropped, the sender may be penalised."""


class MessageTooLarge(CodecError):
    """The input is longer than the limit for what was expected."""


class MalformedEncoding(CodecError):
    """The bytes are not one complete msgpack value of the allowed types."""


class NonCanonicalEncoding(CodecError):
    """The bytes decode, but are not the one canonical encoding of their value."""


class SchemaViolation(CodecError):
    """The value decodes, but does not have the shape its kind requires."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class UnknownKind(CodecError):
    """The message kind or version is not one this node understands, or not one allowed here."""


@functools.lru_cache(maxsize=1024)  # the lengths in use are few: message fields, batch sizes
def array_header(length: int) -> bytes:
    """The canonical msgpack header of an array of `length` items: an array's encoding is its
    header followed by its items' encodings, so already-encoded items can be joined as they are."""
    header: bytes = msgpack.Packer().pack_array_header(length)
    return header


def pack(value: Wire) -> bytes:
    """Encode a wire value canonically. Our own values are assumed well-formed (schema checked)."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    try:
        packed: bytes = packer.pack(value)
    except BaseException:
        packer.reset()  # a failed pack leaves its partial output in the buffer
        raise
    return packed


# One packer per thread, reused: `msgpack.packb` makes a new one per call, and each allocates a
# 1 MiB buffer (measured: per-transaction packing was 17 % of a syncing node's time with packb).
_packers = threading.local()


def unpack(data: bytes, bytes_max: int, *, schema_checks_types: bool = False) -> Wire:
    """Decode untrusted bytes to a wire value, enforcing size, allowed types, canonical form.

    `schema_checks_types`: the caller walks the value with a schema that checks the type of every
    item and whose own shape bounds the nesting (schema.decode_message), so the separate walk
    over every item here would only repeat it."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEncoding(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > bytes_max:
        raise MessageTooLarge(f"message is {len(data)} bytes, limit is {bytes_max}")
    if not data:
        raise MalformedEncoding("empty input")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=len(data),
            max_str_len=len(data),
            max_array_len=len(data),
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData as error:
        raise MalformedEncoding(f"{len(error.extra)} trailing bytes after the message") from None
    except UnicodeDecodeError:
        raise MalformedEncoding("a string is not valid UTF-8") from None
    except Exception as error:  # msgpack raises several unrelated types; all mean "not msgpack"
        raise MalformedEncoding(f"not valid msgpack: {str(error)[:80]}") from None
    if not schema_checks_types:
        _check_types(value, depth=0)
    try:
        canonical = pack(value)
    except (ValueError, TypeError):  # nesting past msgpack's packing limit
        raise MalformedEncoding("nesting too deep to be canonical") from None
    if canonical != data:
        raise NonCanonicalEncoding("bytes are not the canonical encoding of their value")
    return value


# Deeper than any message we define (block > header > certificate > signature list > pair).
_DEPTH_MAX = 8


def _check_types(value: Wire, depth: int) -> None:
    if depth > _DEPTH_MAX:
        raise MalformedEncoding(f"nesting deeper than {_DEPTH_MAX}")
    kind = type(value)
    if kind is list:
        for item in value:
            _check_types(item, depth + 1)
    elif kind not in (int, bytes, str, type(None)):
        raise MalformedEncoding(f"type {kind.__name__} is not allowed on the wire")
