"""Declarative message schemas: one table per message kind, checked on decode and on encode.

A message class is a frozen dataclass whose fields carry their wire spec in `Annotated[...]`:

    @message(kind=2)
    class ProviderRevoke:
        signer: PublicKey
        nonce: Nonce
        provider: PublicKey
        signature: Signature = b""

`message` registers the class under `(kind, version)`, so `decode_message` can turn canonical bytes
into the right class and nothing else. Each spec both validates a decoded value (raising
`SchemaViolation` with a dotted path such as `ConsentGrant.scope_tags[3]`) and converts between the
wire form (lists) and the Python form (tuples, nested dataclasses). Encoding runs the same checks,
so the node can never emit a message it would itself refuse.

`Struct` classes are fixed-size arrays without kind and version, for pairs inside a message
(a key wrap, a commit signature).

Compiled fast paths: walking the specs field by field (with a dotted path string built for every
value, in case it fails) costs more than anything else a node does per transaction but verifying
its signature. So each class also gets two functions generated from its specs when it is
registered, as `dataclasses` generates `__init__`: one that checks a wire value and builds the
object, one that checks an object and builds its wire value, each a single expression of
`type(...) is ...` and range tests. They answer only "valid" or "not valid"; on "not valid" the
spec walk runs and raises the `SchemaViolation` that names the field. Both paths accept exactly the
same values (tests/test_schema_compiled.py checks them against each other on random and hostile
input), so the compiled one decides nothing the specs do not.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar, Protocol, TypeVar, dataclass_transform

from healthnode import codec
from healthnode.codec import SchemaViolation, UnknownKind, Wire

# --- field specs ------------------------------------------------------------------------------


class Spec(Protocol):
    def from_wire(self, value: Wire, path: str) -> Any: ...
    def to_wire(self, value: Any, path: str) -> Wire: ...

    # The compiled forms (see the module docstring): Python expressions over the variable named
    # `name`. `*_check` is true exactly when the spec accepts the value ("True" when the
    # conversion itself checks, raising _Invalid); `*_expr` converts a value that passed.
    def wire_check(self, name: str, emit: _Emitter) -> str: ...
    def from_wire_expr(self, name: str, emit: _Emitter) -> str: ...
    def value_check(self, name: str, emit: _Emitter) -> str: ...
    def to_wire_expr(self, name: str, emit: _Emitter) -> str: ...


class _Invalid(Exception):
    """A compiled check failed: run the spec walk to learn which field and why."""


class _Emitter:
    """Collects what generated code refers to (constants by name) and hands out fresh names."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"_Invalid": _Invalid, "_pairwise": itertools.pairwise}
        self._count = 0

    def const(self, value: Any) -> str:
        name = f"_k{self._count}"
        self._count += 1
        self.namespace[name] = value
        return name

    def fresh(self) -> str:
        self._count += 1
        return f"_v{self._count}"


class _Scalar:
    """Specs whose wire value is their Python value (bytes, int, str): one check both ways."""

    __slots__ = ()

    def wire_check(self, name: str, emit: _Emitter) -> str:
        raise NotImplementedError

    def from_wire_expr(self, name: str, emit: _Emitter) -> str:
        return name

    def value_check(self, name: str, emit: _Emitter) -> str:
        return self.wire_check(name, emit)

    def to_wire_expr(self, name: str, emit: _Emitter) -> str:
        return name


@dataclasses.dataclass(frozen=True, slots=True)
class Bytes(_Scalar):
    """A byte string of exactly `size` bytes, or of `size_min..size_max` bytes."""

    size: int | None = None
    size_min: int = 0
    size_max: int = 0

    def from_wire(self, value: Wire, path: str) -> bytes:
        if type(value) is not bytes:
            raise SchemaViolation(path, f"expected bytes, got {_type_name(value)}")
        if self.size is not None:
            if len(value) != self.size:
                raise SchemaViolation(path, f"expected {self.size} bytes, got {len(value)}")
        elif not self.size_min <= len(value) <= self.size_max:
            raise SchemaViolation(
                path, f"expected {self.size_min}..{self.size_max} bytes, got {len(value)}"
            )
        return value

    def to_wire(self, value: Any, path: str) -> Wire:
        return self.from_wire(value, path)

    def wire_check(self, name: str, emit: _Emitter) -> str:
        if self.size is not None:
            return f"(type({name}) is bytes and len({name}) == {self.size})"
        return f"(type({name}) is bytes and {self.size_min} <= len({name}) <= {self.size_max})"


@dataclasses.dataclass(frozen=True, slots=True)
class Int(_Scalar):
    """An integer in `low..high` inclusive (bool is not an int here)."""

    low: int
    high: int

    def from_wire(self, value: Wire, path: str) -> int:
        if type(value) is not int:
            raise SchemaViolation(path, f"expected an integer, got {_type_name(value)}")
        if not self.low <= value <= self.high:
            raise SchemaViolation(path, f"{value} is outside {self.low}..{self.high}")
        return value

    def to_wire(self, value: Any, path: str) -> Wire:
        return self.from_wire(value, path)

    def wire_check(self, name: str, emit: _Emitter) -> str:
        return f"(type({name}) is int and {self.low} <= {name} <= {self.high})"


@dataclasses.dataclass(frozen=True, slots=True)
class Str(_Scalar):
    """A printable UTF-8 string of at most `chars_max` characters, optionally one of `choices`."""

    chars_max: int
    choices: frozenset[str] | None = None
    chars_min: int = 0

    def from_wire(self, value: Wire, path: str) -> str:
        if type(value) is not str:
            raise SchemaViolation(path, f"expected a string, got {_type_name(value)}")
        if self.choices is not None:
            if value not in self.choices:
                allowed = ", ".join(sorted(self.choices))
                raise SchemaViolation(path, f"{value[:40]!r} is not one of: {allowed}")
            return value
        if not self.chars_min <= len(value) <= self.chars_max:
            raise SchemaViolation(
                path, f"expected {self.chars_min}..{self.chars_max} characters, got {len(value)}"
            )
        if not value.isprintable():
            raise SchemaViolation(path, "contains control or non-printable characters")
        return value

    def to_wire(self, value: Any, path: str) -> Wire:
        return self.from_wire(value, path)

    def wire_check(self, name: str, emit: _Emitter) -> str:
        if self.choices is not None:
            return f"(type({name}) is str and {name} in {emit.const(self.choices)})"
        return (f"(type({name}) is str and {self.chars_min} <= len({name}) <= {self.chars_max}"
                f" and {name}.isprintable())")


@dataclasses.dataclass(frozen=True, slots=True)
class Optional:
    """`inner`, or nil."""

    inner: Spec

    def from_wire(self, value: Wire, path: str) -> Any:
        return None if value is None else self.inner.from_wire(value, path)

    def to_wire(self, value: Any, path: str) -> Wire:
        return None if value is None else self.inner.to_wire(value, path)

    def wire_check(self, name: str, emit: _Emitter) -> str:
        return f"({name} is None or {self.inner.wire_check(name, emit)})"

    def from_wire_expr(self, name: str, emit: _Emitter) -> str:
        inner = self.inner.from_wire_expr(name, emit)
        return name if inner == name else f"(None if {name} is None else {inner})"

    def value_check(self, name: str, emit: _Emitter) -> str:
        return f"({name} is None or {self.inner.value_check(name, emit)})"

    def to_wire_expr(self, name: str, emit: _Emitter) -> str:
        inner = self.inner.to_wire_expr(name, emit)
        return name if inner == name else f"(None if {name} is None else {inner})"


@dataclasses.dataclass(frozen=True, slots=True)
class ListOf:
    """An array of `item`, at most `items_max` long, at least `items_min`; optionally sorted and
    without duplicates (`sorted_unique`), so sets have one canonical order."""

    item: Spec
    items_max: int
    items_min: int = 0
    sorted_unique: bool = False

    def from_wire(self, value: Wire, path: str) -> tuple[Any, ...]:
        if type(value) is not list:
            raise SchemaViolation(path, f"expected an array, got {_type_name(value)}")
        return self._check([self.item.from_wire(v, f"{path}[{i}]") for i, v in enumerate(value)],
                           value, path)

    def to_wire(self, value: Any, path: str) -> Wire:
        if not isinstance(value, tuple | list):
            raise SchemaViolation(path, f"expected a sequence, got {_type_name(value)}")
        wire = [self.item.to_wire(v, f"{path}[{i}]") for i, v in enumerate(value)]
        self._check(list(value), wire, path)
        return wire

    def _check(self, items: list[Any], wire: list[Wire], path: str) -> tuple[Any, ...]:
        if not self.items_min <= len(items) <= self.items_max:
            raise SchemaViolation(
                path, f"expected {self.items_min}..{self.items_max} items, got {len(items)}"
            )
        if self.sorted_unique and any(a >= b for a, b in itertools.pairwise(wire)):
            raise SchemaViolation(path, "items must be sorted and without duplicates")
        return tuple(items)

    def _bounds(self, name: str) -> str:
        return f"{self.items_min} <= len({name}) <= {self.items_max}"

    def _sorted(self, name: str, emit: _Emitter) -> str:
        a, b = emit.fresh(), emit.fresh()
        return f"all({a} < {b} for {a}, {b} in _pairwise({name}))"

    def wire_check(self, name: str, emit: _Emitter) -> str:
        item = emit.fresh()
        parts = [f"type({name}) is list", self._bounds(name)]
        item_check = self.item.wire_check(item, emit)
        if item_check != "True":
            parts.append(f"all({item_check} for {item} in {name})")
        if self.sorted_unique:  # on wire values, as the spec walk compares them
            parts.append(self._sorted(name, emit))
        return f"({' and '.join(parts)})"

    def from_wire_expr(self, name: str, emit: _Emitter) -> str:
        item = emit.fresh()
        convert = self.item.from_wire_expr(item, emit)
        return f"tuple({name})" if convert == item else (
            f"tuple([{convert} for {item} in {name}])")

    def value_check(self, name: str, emit: _Emitter) -> str:
        item = emit.fresh()
        parts = [f"isinstance({name}, (tuple, list))", self._bounds(name)]
        item_check = self.item.value_check(item, emit)
        if item_check != "True":
            parts.append(f"all({item_check} for {item} in {name})")
        if self.sorted_unique and self.item.to_wire_expr(item, emit) == item:
            parts.append(self._sorted(name, emit))
        return f"({' and '.join(parts)})"

    def to_wire_expr(self, name: str, emit: _Emitter) -> str:
        item = emit.fresh()
        convert = self.item.to_wire_expr(item, emit)
        if convert == item:
            return f"list({name})"
        wire = f"[{convert} for {item} in {name}]"
        return f"{emit.const(_sorted_unique)}({wire})" if self.sorted_unique else wire


def _sorted_unique(wire: list[Wire]) -> list[Wire]:
    if any(a >= b for a, b in itertools.pairwise(wire)):
        raise _Invalid
    return wire


@dataclasses.dataclass(frozen=True, slots=True)
class Nested:
    """A full message (with kind and version) of one of `classes`, inside another message."""

    classes: tuple[type[Any], ...]

    def from_wire(self, value: Wire, path: str) -> Any:
        return _message_from_wire(value, path, self.classes)

    def to_wire(self, value: Any, path: str) -> Wire:
        if not isinstance(value, self.classes):
            raise SchemaViolation(path, f"expected {self._names()}, got {_type_name(value)}")
        wire: Wire = value.to_wire()
        return wire

    def _names(self) -> str:
        return " or ".join(c.__name__ for c in self.classes)

    def wire_check(self, name: str, emit: _Emitter) -> str:
        return "True"  # the conversion checks

    def from_wire_expr(self, name: str, emit: _Emitter) -> str:
        return f"{emit.const(_nested_from_wire(self.classes))}({name})"

    def value_check(self, name: str, emit: _Emitter) -> str:
        return f"isinstance({name}, {emit.const(self.classes)})"

    def to_wire_expr(self, name: str, emit: _Emitter) -> str:
        return f"{name}.to_wire()"


def _nested_from_wire(classes: tuple[type[Any], ...]) -> Callable[[Wire], Any]:
    by_kind = {(cls.KIND, cls.VERSION): cls._FAST_FROM_WIRE for cls in classes}
    pack, set_attribute = codec.pack, object.__setattr__

    def from_wire(value: Wire) -> Any:
        if type(value) is not list or len(value) < 2:
            raise _Invalid
        kind, version = value[0], value[1]
        if type(kind) is not int or type(version) is not int:
            raise _Invalid
        decode = by_kind.get((kind, version))
        if decode is None:
            raise _Invalid
        decoded = decode(value)
        set_attribute(decoded, "_wire_bytes", pack(value))
        return decoded

    return from_wire


@dataclasses.dataclass(frozen=True, slots=True)
class StructOf:
    """A fixed-size array of a `struct` class's fields, without kind and version."""

    cls: type[Any]

    def from_wire(self, value: Wire, path: str) -> Any:
        fields = self.cls.WIRE_FIELDS
        if type(value) is not list or len(value) != len(fields):
            raise SchemaViolation(path, f"expected an array of {len(fields)} fields")
        return self.cls(**{
            name: spec.from_wire(v, f"{path}.{name}")
            for (name, spec), v in zip(fields, value, strict=True)
        })

    def to_wire(self, value: Any, path: str) -> Wire:
        if not isinstance(value, self.cls):
            raise SchemaViolation(path, f"expected {self.cls.__name__}, got {_type_name(value)}")
        return [spec.to_wire(getattr(value, name), f"{path}.{name}")
                for name, spec in self.cls.WIRE_FIELDS]

    def wire_check(self, name: str, emit: _Emitter) -> str:
        return "True"  # the conversion checks

    def from_wire_expr(self, name: str, emit: _Emitter) -> str:
        return f"{emit.const(self.cls._FAST_FROM_WIRE)}({name})"

    def value_check(self, name: str, emit: _Emitter) -> str:
        return f"isinstance({name}, {emit.const(self.cls)})"

    def to_wire_expr(self, name: str, emit: _Emitter) -> str:
        return f"{emit.const(self.cls._FAST_TO_WIRE)}({name})"


def _type_name(value: object) -> str:
    return "nil" if value is None else type(value).__name__


# --- message classes --------------------------------------------------------------------------

_REGISTRY: dict[tuple[int, int], type[Any]] = {}

T = TypeVar("T")


def _wire_fields(cls: type[Any]) -> tuple[tuple[str, Spec], ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = []
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        specs = [m for m in getattr(hint, "__metadata__", ()) if hasattr(m, "from_wire")]
        if len(specs) != 1:
            raise TypeError(f"{cls.__name__}.{field.name} needs exactly one wire spec")
        fields.append((field.name, specs[0]))
    return tuple(fields)


def _compile(cls: type[Any], header: tuple[int, ...]) -> None:
    """Generate `cls._FAST_FROM_WIRE(wire)` and `cls._FAST_TO_WIRE(obj)` from its WIRE_FIELDS;
    `header` is the kind and version a message's array starts with (none for a struct). Each
    raises _Invalid (or TypeError, on values no spec would take) where the specs would refuse."""
    fields: tuple[tuple[str, Spec], ...] = cls.WIRE_FIELDS
    emit = _Emitter()
    klass = emit.const(cls)
    # Each field's value in a local named f0, f1, ...: checks and conversions refer to those.
    columns = [(f"f{i}", field, spec) for i, (field, spec) in enumerate(fields)]
    names = ", ".join(name for name, _, _ in columns)
    skip = len(header)

    def condition(checks: list[str]) -> list[str]:
        kept = [check for check in checks if check != "True"]
        return [f"    if not ({' and '.join(kept)}):", "        raise _Invalid"] if kept else []

    decode = [
        "def from_wire(value):",
        f"    if type(value) is not list or len(value) != {skip + len(fields)}:",
        "        raise _Invalid",
        f"    {names}, = value[{skip}:]",
        *condition([spec.wire_check(name, emit) for name, _, spec in columns]),
        f"    return {klass}("
        + ", ".join(spec.from_wire_expr(name, emit) for name, _, spec in columns) + ")",
    ]
    wire = [str(number) for number in header]
    wire += [spec.to_wire_expr(name, emit) for name, _, spec in columns]
    encode = [
        "def to_wire(self):",
        *(f"    {name} = self.{field}" for name, field, _ in columns),
        *condition([spec.value_check(name, emit) for name, _, spec in columns]),
        f"    return [{', '.join(wire)}]",
    ]
    exec("\n".join(decode) + "\n\n" + "\n".join(encode), emit.namespace)  # noqa: S102
    cls._FAST_FROM_WIRE = staticmethod(emit.namespace["from_wire"])
    cls._FAST_TO_WIRE = staticmethod(emit.namespace["to_wire"])


@dataclass_transform(frozen_default=True)
def struct(cls: type[T]) -> type[T]:
    """Make `cls` a frozen dataclass encoded as a bare array of its fields."""
    data_cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
    data_cls.WIRE_FIELDS = _wire_fields(data_cls)  # type: ignore[attr-defined]
    _compile(data_cls, ())
    return data_cls


@dataclass_transform(frozen_default=True)
def message(kind: int, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Make `cls` a frozen dataclass encoded as `[kind, version, ...fields]` and register it."""

    def wrap(cls: type[T]) -> type[T]:
        data_cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
        if (kind, version) in _REGISTRY:
            raise TypeError(f"message kind {kind} version {version} registered twice")
        data_cls.KIND = kind  # type: ignore[attr-defined]
        data_cls.VERSION = version  # type: ignore[attr-defined]
        data_cls.WIRE_FIELDS = _wire_fields(data_cls)  # type: ignore[attr-defined]
        _compile(data_cls, (kind, version))
        _REGISTRY[(kind, version)] = data_cls
        return data_cls

    return wrap


class Message:
    """Mixin giving a registered message its encoding. Subclasses are made with `@message`."""

    KIND: ClassVar[int]
    VERSION: ClassVar[int]
    WIRE_FIELDS: ClassVar[tuple[tuple[str, Spec], ...]]
    # The canonical bytes, kept once known: a message is immutable, so its encoding never
    # changes, and hashing a transaction (its id) must not walk its schema again each time.
    __slots__ = ("_wire_bytes",)

    def to_wire(self) -> list[Wire]:
        try:
            wire: list[Wire] = self._FAST_TO_WIRE(self)  # type: ignore[attr-defined]
        except (_Invalid, TypeError):
            return self.checked_to_wire()  # raises the SchemaViolation naming the field
        return wire

    def checked_to_wire(self) -> list[Wire]:
        """`to_wire` by walking the specs: slower, and names the field of any problem."""
        name = type(self).__name__
        return [self.KIND, self.VERSION] + [
            spec.to_wire(getattr(self, field), f"{name}.{field}")
            for field, spec in self.WIRE_FIELDS
        ]

    def encode(self) -> bytes:
        encoded: bytes | None = getattr(self, "_wire_bytes", None)
        if encoded is None:
            encoded = codec.pack(self.to_wire())
            object.__setattr__(self, "_wire_bytes", encoded)
        return encoded


M = TypeVar("M", bound=Message)


def decode_message(data: bytes, expected: type[M] | tuple[type[M], ...], bytes_max: int) -> M:
    """Decode untrusted bytes into one of the `expected` message classes, or raise CodecError."""
    classes = expected if isinstance(expected, tuple) else (expected,)
    value = codec.unpack(data, bytes_max, schema_checks_types=True)
    result: M = _message_from_wire(value, "message", classes, encoded=bytes(data))
    return result


def _message_from_wire(value: Wire, path: str, classes: Iterable[type[Any]],
                       encoded: bytes | None = None) -> Any:
    """`encoded`: the value's canonical encoding, when the caller has it."""
    classes = tuple(classes)
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
    fields = cls.WIRE_FIELDS
    if len(value) != 2 + len(fields):
        raise SchemaViolation(
            f"{path}<{cls.__name__}>", f"expected {len(fields)} fields, got {len(value) - 2}"
        )
    try:
        decoded = cls._FAST_FROM_WIRE(value)
    except (_Invalid, TypeError):  # the spec walk names the field (or, if it finds none, agrees)
        decoded = cls(**{
            name: spec.from_wire(v, f"{cls.__name__}.{name}")
            for (name, spec), v in zip(fields, value[2:], strict=True)
        })
    # Decoding runs only on input that `codec.unpack` found canonical, so the packed wire value
    # is exactly the message's encoding (msgpack's C packer: far cheaper than to_wire + pack).
    object.__setattr__(decoded, "_wire_bytes", codec.pack(value) if encoded is None else encoded)
    return decoded


def registered_messages() -> tuple[type[Any], ...]:
    """Every registered message class (for property tests that must cover them all)."""
    return tuple(_REGISTRY.values())


__all__ = [
    "Annotated",
    "Bytes",
    "Int",
    "ListOf",
    "Message",
    "Nested",
    "Optional",
    "Str",
    "StructOf",
    "decode_message",
    "message",
    "registered_messages",
    "struct",
]
