"""Hypothesis strategies built from the message schemas themselves, so every registered message
kind (including ones added later) is covered by the codec property tests without a list to keep."""

from __future__ import annotations

import importlib
from typing import Any

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


def for_spec(spec: Any) -> st.SearchStrategy[Any]:
    if isinstance(spec, schema.Bytes):
        if spec.size is not None:
            return st.binary(min_size=spec.size, max_size=spec.size)
        return st.binary(min_size=spec.size_min, max_size=min(spec.size_max, 96))
    if isinstance(spec, schema.Int):
        return st.integers(spec.low, spec.high)
    if isinstance(spec, schema.Str):
        if spec.choices is not None:
            return st.sampled_from(sorted(spec.choices))
        return st.text(
            alphabet=st.characters(categories=("L", "N", "P"), include_characters=" "),
            min_size=spec.chars_min,
            max_size=min(spec.chars_max, 24),
        ).filter(str.isprintable)
    if isinstance(spec, schema.Optional):
        return st.none() | for_spec(spec.inner)
    if isinstance(spec, schema.ListOf):
        items_max = min(spec.items_max, 4)
        items = st.lists(for_spec(spec.item), min_size=spec.items_min, max_size=items_max)
        if spec.sorted_unique:
            return items.map(lambda values: _sorted_unique(spec, values)).filter(
                lambda values: len(values) >= spec.items_min
            )
        return items.map(tuple)
    if isinstance(spec, schema.Nested):
        return st.one_of([for_message(cls) for cls in spec.classes])
    if isinstance(spec, schema.StructOf):
        return st.builds(spec.cls, **{name: for_spec(s) for name, s in spec.cls.WIRE_FIELDS})
    raise TypeError(f"no strategy for {spec!r}")


def _sorted_unique(spec: schema.ListOf, values: list[Any]) -> tuple[Any, ...]:
    by_wire = {}
    for value in values:
        wire = spec.item.to_wire(value, "strategy")
        by_wire[repr(wire)] = (wire, value)
    ordered = sorted(by_wire.values(), key=lambda pair: pair[0])
    return tuple(value for _, value in ordered)


def for_message(cls: type[Any]) -> st.SearchStrategy[Any]:
    return st.deferred(
        lambda: st.builds(cls, **{name: for_spec(spec) for name, spec in cls.WIRE_FIELDS})
    )
