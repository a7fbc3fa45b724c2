"""Wire types: every message and transaction is a msgspec Struct, encoded and decoded in C.

A message is a frozen, array-like msgspec Struct whose class keyword `tag` is its kind; its fields
carry their limits as `msgspec.Meta` in `Annotated[...]` (protocol/fields.py names the common
ones):

    class ProviderRevoke(Tx, tag=2):
        signer: PublicKey
        nonce: Nonce
        provider: PublicKey
        signature: Signature = UNSIGNED

It travels as `[kind, version, ...fields]` (docs/protocol.md): msgspec writes the tag first, and
the base class's first field is the version. `Struct` classes (a key wrap, a commit signature) are
bare arrays of their fields, without kind and version.

Theory of operation
-------------------
- **Decoding** (`decode_message`) bounds the input's size, then lets msgspec decode it into one of
  the expected classes, checking every type, length and range as it goes; a length beyond what
  the input still holds is refused before anything is allocated. Two rules msgspec does not know
  are checked by `__post_init__` as each Struct is decoded: sets (`SORTED_UNIQUE` in the field's
  `Annotated`) are sorted and without duplicates, so a set has one encoding, and names
  (`PRINTABLE`) hold no control characters. The result must re-encode to exactly the input bytes
  (docs/protocol.md, "Canonical encoding"), which refuses every other encoding of the same value.
  The input bytes become the message's kept encoding, so hashing it never encodes it again.
- **Errors.** msgspec's own error names a position (`$[2][0][3]`); a node's error must name the
  field. So when msgspec refuses, or the bytes are not canonical, the input is walked once more,
  slowly, by `_explain`, which reads the same type hints and says what is wrong where
  (`ConsentRevoke.grant_id: expected 32 bytes, got 5`), as a `SchemaViolation`, an `UnknownKind`,
  or codec.unpack's `MalformedEncoding` or `NonCanonicalEncoding`. Both checkers must agree
  (tests/test_wire_types.py).
- **Encoding** (`Message.encode`) is msgspec's, kept once made. A message that did not come from
  a decode (its class called, `replace`, `msgspec.convert`, a copy) is decoded once from its own
  encoding before that encoding is kept, and again at every attempt until that check passes: the
  node never emits a message that it would itself refuse. A decode marks what it made
  (`_checked`, nested messages too), which is valid already.
- **Fields added later.** A kind that gains a field keeps the bytes of every value it had: the
  new field comes last with a default (`ADDED_FIELDS` counts such fields), and a message whose
  added fields hold their defaults is encoded without them, as before they existed. A decode
  takes either length (msgspec fills a missing trailing field with its default), and the
  canonical check refuses an added field written out at its default. A message nested in another
  is shortened too (a wallet answer that carries a GrantState has the bytes of before): a class
  whose fields can hold such a message is encoded from a list that `encodable` builds, the rest by
  msgspec directly. (For state values, whose bytes the state root hashes: `GrantState.purposes`,
  rules version 5.)
- **The version shim.** msgspec puts one tag before the fields, and our messages start with two
  numbers, kind and version. The version is therefore the first field of every message, and the
  metaclass supplies it when a message is built, so code writes `Vote(PREVOTE, height, ...)`
  without it. Type checkers do not see the field (it is declared for the runtime only).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import itertools
import operator
import re
import types
import typing
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, Union

import msgspec
from msgspec import Meta

from healthnode import codec
from healthnode.codec import (
    MalformedEncoding,
    MessageTooLarge,
    NonCanonicalEncoding,
    SchemaViolation,
    UnknownKind,
    Wire,
)


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# In a field's Annotated[...]: checked by Struct.__post_init__ while decoding (msgspec ignores
# metadata that is not a Meta).
SORTED_UNIQUE: typing.Final = _Marker("SORTED_UNIQUE")  # a tuple: sorted, no duplicates
PRINTABLE: typing.Final = _Marker("PRINTABLE")  # a str: no control or non-printable character

# True while msgspec decodes for us: __post_init__ checks then, and not when our code builds a
# message (that one is checked when it is encoded, by decoding it).
_DECODING: contextvars.ContextVar[bool] = contextvars.ContextVar("decoding", default=False)
_ENCODER: typing.Final = msgspec.msgpack.Encoder()


class _SchemaMeta(msgspec.StructMeta):
    """Gives every wire class its WIRE_FIELDS: (name, type hint) of its fields, version aside."""

    @property
    def WIRE_FIELDS(cls) -> tuple[tuple[str, Any], ...]:
        return _fields_of(cls)


class _MessageMeta(_SchemaMeta):
    """Registers each message class under its kind and version, and supplies a message's
    version when our code builds one."""

    def __new__(mcls, name: str, bases: tuple[type, ...], namespace: dict[str, Any],
                **kwargs: Any) -> Any:
        if "version" in namespace.get("__annotations__", {}) and "tag" in kwargs:
            raise TypeError(f"{name}: a field named 'version' would replace the message's own "
                            f"version; name it after what it versions")
        cls: Any = super().__new__(mcls, name, bases, namespace, **kwargs)
        kind = cls.__struct_config__.tag
        if "tag" not in kwargs:
            return cls  # a base of messages (Message, Signed, Tx)
        if not isinstance(kind, int) or (kind, cls.VERSION) in _REGISTRY:
            raise TypeError(f"{name}: kind {kind!r} is not a new integer kind")
        cls.KIND = kind
        _REGISTRY[(kind, cls.VERSION)] = cls
        return cls

    def __call__(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if "version" in kwargs or len(args) == len(cls.__struct_fields__):
            # Given already: by name (a tool that fills every field), or with every field
            # (pickle and copy rebuild a message from all of its fields).
            return super().__call__(*args, **kwargs)
        return super().__call__(cls.VERSION, *args, **kwargs)


def _post_init(self: Struct) -> None:
    if _DECODING.get():
        _check_sets_and_names(self)
        if isinstance(self, Message):  # what a decode made is checked: it may be sent as is
            self.__dict__["_checked"] = True


# Frozen: a message never changes once made (its encoding and hash are kept). Type checkers are
# shown it unfrozen, as they would otherwise want every subclass to say `frozen=True` again.
if TYPE_CHECKING:
    class Struct(msgspec.Struct, metaclass=_SchemaMeta, array_like=True,
                 forbid_unknown_fields=True):
        """A fixed array of fields, inside a message (no kind, no version)."""
else:
    class Struct(msgspec.Struct, metaclass=_SchemaMeta, array_like=True, frozen=True,
                 forbid_unknown_fields=True):
        """A fixed array of fields, inside a message (no kind, no version)."""

        __post_init__ = _post_init


class Message(Struct, metaclass=_MessageMeta, dict=True):
    """A message: `[kind, version, ...fields]`; subclasses name their kind with `tag=`."""

    KIND: ClassVar[int]
    VERSION: ClassVar[int] = 1
    # Trailing fields added after the kind's first release, each with a default: left off the
    # encoding while they (and every one after them) hold their defaults (module docstring).
    ADDED_FIELDS: ClassVar[int] = 0
    if not TYPE_CHECKING:  # the version shim (module docstring): a field at run time only
        version: Literal[1]

    def encode(self) -> bytes:
        known: bytes | None = self.__dict__.get("_wire_bytes")
        if known is None:
            known = _encode_checked(self)
            self.__dict__["_wire_bytes"] = known
        return known

    def to_wire(self) -> list[Wire]:
        """The message as wire values (lists, ints, bytes, str, None)."""
        wire: list[Wire] = msgspec.msgpack.decode(self.encode())
        return wire


_REGISTRY: dict[tuple[int, int], type[Any]] = {}
R = TypeVar("R")
M = TypeVar("M", bound=Message)


def keep_checked_encoding(message: Message, encoded: bytes) -> None:
    """Keep `encoded` as `message`'s encoding, known to be checked: for code that made the
    encoding from parts already checked (a block joined from its parts' encodings, a signed copy
    of a message whose check passed)."""
    message.__dict__["_checked"] = True
    message.__dict__["_wire_bytes"] = encoded


def replace(obj: R, **changes: Any) -> R:
    """A copy of `obj` with `changes`; a message copy is checked when it is encoded. (Also
    takes a dataclass, so that code holding either kind needs one `replace`.)"""
    if not isinstance(obj, msgspec.Struct):
        copied: R = dataclasses.replace(obj, **changes)  # type: ignore[type-var]
        return copied
    copy: R = msgspec.structs.replace(obj, **changes)
    return copy


def _encode_alone(message: Message) -> bytes:
    """The message's encoding: msgspec's, less the added fields at their defaults
    (`Message.ADDED_FIELDS`) at the end of it and of every message inside it."""
    if not holds_added_fields(type(message)):
        return _ENCODER.encode(message)
    return _ENCODER.encode(encodable(message))


def encodable(value: Any) -> Any:
    """`value` for msgspec to encode, with each Struct that holds added fields made a list
    (a message's without its trailing added fields at their defaults)."""
    if isinstance(value, tuple):
        return [encodable(item) for item in value]
    if not isinstance(value, msgspec.Struct) or not holds_added_fields(type(value)):
        return value
    cls: Any = type(value)
    names = cls.__struct_fields__
    items = [encodable(getattr(value, name)) for name in names]
    if not issubclass(cls, Message):
        return items
    defaults = cls.__struct_defaults__
    keep = len(names)
    while (keep > len(names) - cls.ADDED_FIELDS
           and getattr(value, names[keep - 1]) == defaults[keep - 1 - len(names)]):
        keep -= 1
    return [cls.KIND, *items[:keep]]


_holds: dict[type[Any], bool] = {}


def holds_added_fields(cls: type[Any]) -> bool:
    """Whether a value of `cls` can hold a message with added fields (itself included)."""
    known = _holds.get(cls)
    if known is None:
        _holds[cls] = False  # a class that refers to itself: decided by its other fields
        known = _holds[cls] = bool(getattr(cls, "ADDED_FIELDS", 0)) or any(
            _hintholds_added_fields(hint) for _, hint in _fields_of(cls))
    return known


def _hintholds_added_fields(hint: Any) -> bool:
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return holds_added_fields(hint)
    return any(_hintholds_added_fields(arg) for arg in typing.get_args(hint))


def _encode_checked(message: Message) -> bytes:
    """The message's encoding; checked by decoding it unless the message is marked `_checked`,
    which only a decode and a check that passed set (so a message made any other way, and one
    whose check failed, is checked again at every attempt)."""
    try:
        encoded = _encode_alone(message)
    except (TypeError, ValueError, OverflowError) as error:  # a value msgspec cannot encode
        raise SchemaViolation(type(message).__name__, f"cannot be encoded: {error}") from None
    if not message.__dict__.get("_checked"):
        try:
            decode_message(encoded, type(message), len(encoded))
        except UnknownKind as error:  # a field of ours holds a message of the wrong class
            path, _, problem = str(error).partition(": ")
            raise SchemaViolation(path, problem) from None
        message.__dict__["_checked"] = True
    return encoded


# --- decoding ------------------------------------------------------------------------------


_decoders: dict[tuple[type[Any], ...], msgspec.msgpack.Decoder[Any]] = {}


def _decoder(classes: tuple[type[Any], ...]) -> msgspec.msgpack.Decoder[Any]:
    decoder = _decoders.get(classes)
    if decoder is None:
        target: Any = functools.reduce(operator.or_, classes)  # one class, or their union
        decoder = _decoders[classes] = msgspec.msgpack.Decoder(target)
    return decoder


def decode_message(data: bytes, expected: type[M] | tuple[type[M], ...], bytes_max: int) -> M:
    """Decode untrusted bytes into one of the `expected` message classes, or raise CodecError."""
    classes = expected if isinstance(expected, tuple) else (expected,)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEncoding(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > bytes_max:
        raise MessageTooLarge(f"message is {len(data)} bytes, limit is {bytes_max}")
    token = _DECODING.set(True)
    try:
        message = _decoder(classes).decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise _explain(data, bytes_max, classes, str(error)) from None
    finally:
        _DECODING.reset(token)
    if _encode_alone(message) != data:
        raise _explain(data, bytes_max, classes, "not canonical")
    message.__dict__["_wire_bytes"] = data  # (and `_checked`, set as it was decoded)
    result: M = message
    return result


def registered_messages() -> tuple[type[Any], ...]:
    """Every registered message class (for property tests that must cover them all)."""
    return tuple(_REGISTRY.values())


# --- the rules msgspec does not know ---------------------------------------------------------

_checks: dict[type[Any], tuple[tuple[str, _Marker], ...]] = {}


def _check_sets_and_names(obj: Struct) -> None:
    cls = type(obj)
    checks = _checks.get(cls)
    if checks is None:
        checks = _checks[cls] = tuple(
            (name, marker) for name, hint in _fields_of(cls)
            for marker in _markers(hint))
    for name, marker in checks:
        value = getattr(obj, name)
        if marker is SORTED_UNIQUE:
            if not _sorted_unique(value):
                raise ValueError(f"{cls.__name__}.{name}: items must be sorted and without "
                                 "duplicates")
        elif isinstance(value, str) and not value.isprintable():
            raise ValueError(f"{cls.__name__}.{name}: contains control or non-printable "
                             "characters")


def _sorted_unique(items: tuple[Any, ...]) -> bool:
    """Sorted by wire value (a Struct compares as the tuple of its fields) and no duplicate."""
    keys = [msgspec.structs.astuple(item) if isinstance(item, Struct) else item
            for item in items]
    return all(a < b for a, b in itertools.pairwise(keys))


_field_cache: dict[type[Any], tuple[tuple[str, Any], ...]] = {}


def _fields_of(cls: type[Any]) -> tuple[tuple[str, Any], ...]:
    """(name, type hint with its Annotated metadata) of each wire field, the version aside."""
    fields = _field_cache.get(cls)
    if fields is None:
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = _field_cache[cls] = tuple(
            (name, hints[name]) for name in cls.__struct_fields__ if name != "version")
    return fields


def _markers(hint: Any) -> Iterator[_Marker]:
    if typing.get_origin(hint) is Annotated:
        yield from (m for m in hint.__metadata__ if isinstance(m, _Marker))
        hint = typing.get_args(hint)[0]
    if _is_union(hint):  # X | None: the markers of X
        for option in typing.get_args(hint):
            yield from _markers(option)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


# --- naming the problem ------------------------------------------------------------------------


def _explain(data: bytes, bytes_max: int, classes: tuple[type[Any], ...],
             refusal: str) -> Exception:
    """The CodecError that names what is wrong with `data`, which msgspec refused (`refusal`)
    or which is not canonical. codec.unpack names malformed and non-canonical bytes; the walk
    names a field."""
    try:
        wire = codec.unpack(data, bytes_max, schema_checks_types=True)
        _check_message(wire, "message", classes)
    except (SchemaViolation, UnknownKind, MalformedEncoding, NonCanonicalEncoding) as error:
        return error
    if refusal == "not canonical":
        return NonCanonicalEncoding("bytes are not the canonical encoding of their value")
    return SchemaViolation("message", refusal)  # msgspec's words, when the walk finds nothing


def _type_name(value: object) -> str:
    return "nil" if value is None else type(value).__name__


def _check_message(value: Wire, path: str, classes: tuple[type[Any], ...]) -> None:
    if type(value) is not list or len(value) < 2:
        raise SchemaViolation(path, "expected an array [kind, version, ...fields]")
    kind, version = value[0], value[1]
    if type(kind) is not int or type(version) is not int:
        raise SchemaViolation(path, "kind and version must be integers")
    cls = _REGISTRY.get((kind, version))
    if cls is None:
        raise UnknownKind(f"{path}: unknown message kind {kind} version {version}")
    if cls not in classes:
        allowed = ", ".join(c.__name__ for c in classes)
        raise UnknownKind(f"{path}: a {cls.__name__} is not allowed here (expected {allowed})")
    _check_fields(value[2:], cls, f"{path}<{cls.__name__}>")


def _check_fields(values: list[Wire], cls: type[Any], path: str) -> None:
    fields = _fields_of(cls)
    fewest = len(fields) - cls.ADDED_FIELDS
    if not fewest <= len(values) <= len(fields):
        expected = f"{fewest} to {len(fields)}" if cls.ADDED_FIELDS else f"{len(fields)}"
        raise SchemaViolation(path, f"expected {expected} fields, got {len(values)}")
    fields = fields[:len(values)]
    for (name, hint), item in zip(fields, values, strict=True):
        _check(item, hint, f"{cls.__name__}.{name}")


def _check_struct(value: Wire, cls: type[Any], path: str) -> None:
    fields = _fields_of(cls)
    if type(value) is not list or len(value) != len(fields):
        raise SchemaViolation(path, f"expected an array of {len(fields)} fields")
    for (name, hint), item in zip(fields, value, strict=True):
        _check(item, hint, f"{path}.{name}")


def _check(value: Wire, hint: Any, path: str) -> None:
    meta = Meta()
    markers: tuple[Any, ...] = ()
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        metas = [m for m in extras if isinstance(m, Meta)]
        meta = metas[0] if metas else meta
        markers = tuple(m for m in extras if isinstance(m, _Marker))
    if _is_union(hint):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return
        messages = tuple(o for o in options if isinstance(o, type) and issubclass(o, Message))
        if messages and len(messages) == len([o for o in options if o is not type(None)]):
            _check_message(value, path, messages)
            return
        (inner,) = [o for o in options if o is not type(None)]
        _check(value, inner, path)
        return
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if type(value) is not type(choices[0]):
            raise SchemaViolation(path, f"expected a string, got {_type_name(value)}")
        if value not in choices:
            raise SchemaViolation(path, f"{value[:40]!r} is not one of: "
                                        f"{', '.join(sorted(choices))}")
        return
    if hint is bytes:
        if type(value) is not bytes:
            raise SchemaViolation(path, f"expected bytes, got {_type_name(value)}")
        low, high = meta.min_length or 0, meta.max_length
        if low == high:
            if len(value) != low:
                raise SchemaViolation(path, f"expected {low} bytes, got {len(value)}")
        elif not low <= len(value) <= typing.cast(int, high):
            raise SchemaViolation(path, f"expected {low}..{high} bytes, got {len(value)}")
        return
    if hint is int:
        if type(value) is not int:
            raise SchemaViolation(path, f"expected an integer, got {_type_name(value)}")
        low, high = typing.cast(int, meta.ge), typing.cast(int, meta.le)
        if not low <= value <= high:
            raise SchemaViolation(path, f"{value} is outside {low}..{high}")
        return
    if hint is str:
        if type(value) is not str:
            raise SchemaViolation(path, f"expected a string, got {_type_name(value)}")
        low, high = meta.min_length or 0, meta.max_length
        if not low <= len(value) <= typing.cast(int, high):
            raise SchemaViolation(path, f"expected {low}..{high} characters, got {len(value)}")
        if PRINTABLE in markers and not value.isprintable():
            raise SchemaViolation(path, "contains control or non-printable characters")
        if meta.pattern is not None and re.search(meta.pattern, value) is None:
            raise SchemaViolation(path, f"{value[:60]!r} does not match {meta.pattern}")
        return
    if typing.get_origin(hint) is tuple:
        if type(value) is not list:
            raise SchemaViolation(path, f"expected an array, got {_type_name(value)}")
        item_hint = typing.get_args(hint)[0]
        for index, item in enumerate(value):
            _check(item, item_hint, f"{path}[{index}]")
        low, high = meta.min_length or 0, meta.max_length
        if not low <= len(value) <= typing.cast(int, high):
            raise SchemaViolation(path, f"expected {low}..{high} items, got {len(value)}")
        if SORTED_UNIQUE in markers and any(a >= b for a, b in itertools.pairwise(value)):
            raise SchemaViolation(path, "items must be sorted and without duplicates")
        return
    if isinstance(hint, type) and issubclass(hint, Message):
        _check_message(value, path, (hint,))
        return
    if isinstance(hint, type) and issubclass(hint, Struct):
        _check_struct(value, hint, path)
        return
    raise TypeError(f"{path}: no check for the type {hint!r}")


__all__ = [
    "PRINTABLE",
    "SORTED_UNIQUE",
    "Annotated",
    "Message",
    "Meta",
    "Struct",
    "decode_message",
    "encodable",
    "holds_added_fields",
    "keep_checked_encoding",
    "registered_messages",
    "replace",
]
