"""Hypothesis strategies built from the message types themselves (their msgspec limits), so
every registered message kind (including ones added later) is covered by the codec property tests
without a list to keep."""

from __future__ import annotations

import importlib
import types
import typing
from typing import Any

import msgspec
from hypothesis import strategies as st

from healthnode.protocol import schema

# Every module that registers message kinds, so property tests cover all of them.
MESSAGE_MODULES = (
    "healthnode.protocol.tx",  # transactions
    "healthnode.protocol.block",  # blocks, votes, proposals, certificates
    "healthnode.protocol.genesis",
    "healthnode.protocol.client",  # wallet protocol, 70-90
    "healthnode.protocol.wire",  # node wire messages, 60-67
    "healthnode.ledger.state",  # state records, 45-59
    "healthnode.consensus.safety",  # the double-sign guard, 44
)


def all_messages() -> tuple[type[Any], ...]:
    for module in MESSAGE_MODULES:
        importlib.import_module(module)
    return schema.registered_messages()


def for_spec(hint: Any) -> st.SearchStrategy[Any]:
    """Values that a field of type `hint` (its msgspec limits and our markers) accepts."""
    meta, markers = msgspec.Meta(), ()
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        meta = next((m for m in extras if isinstance(m, msgspec.Meta)), meta)
        markers = tuple(extras)
    low, high = meta.min_length or 0, meta.max_length
    if typing.get_origin(hint) is typing.Literal:
        return st.sampled_from(sorted(typing.get_args(hint)))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(hint) if o is not type(None)]
        inner = st.one_of([for_spec(o) for o in options])
        return st.none() | inner if len(options) < len(typing.get_args(hint)) else inner
    if hint is bytes:
        return st.binary(min_size=low, max_size=min(high or 0, max(low, 96)))
    if hint is int:
        return st.integers(meta.ge, meta.le)
    if hint is str and meta.pattern is not None:
        return st.from_regex(meta.pattern, fullmatch=True).filter(
            lambda text: low <= len(text) <= (high or len(text)))
    if hint is str:
        return st.text(
            alphabet=st.characters(categories=("L", "N", "P"), include_characters=" "),
            min_size=low, max_size=min(high or 0, max(low, 24)),
        ).filter(str.isprintable)
    if typing.get_origin(hint) is tuple:
        items = st.lists(for_spec(typing.get_args(hint)[0]), min_size=low,
                         max_size=max(low, min(high or 0, 4)))
        if schema.SORTED_UNIQUE in markers:
            return items.map(_sorted_unique).filter(lambda values: len(values) >= low)
        return items.map(tuple)
    if isinstance(hint, type) and issubclass(hint, schema.Message):
        return for_message(hint)
    if isinstance(hint, type) and issubclass(hint, schema.Struct):
        return st.builds(hint, **{name: for_spec(h) for name, h in hint.WIRE_FIELDS})
    raise TypeError(f"no strategy for {hint!r}")


def _wire(value: Any) -> Any:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(value))


def _sorted_unique(values: list[Any]) -> tuple[Any, ...]:
    by_wire = {}
    for value in values:
        wire = _wire(value)
        by_wire[repr(wire)] = (wire, value)
    ordered = sorted(by_wire.values(), key=lambda pair: pair[0])
    return tuple(value for _, value in ordered)


def for_message(cls: type[Any]) -> st.SearchStrategy[Any]:
    return st.deferred(
        lambda: st.builds(cls, **{name: for_spec(hint) for name, hint in cls.WIRE_FIELDS})
    )
