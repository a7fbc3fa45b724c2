"""The compiled codec paths (schema._compile) accept exactly what the spec walk accepts.

Every registered message is drawn valid, then its wire value (or its fields, for encoding) is
damaged at a random place with a hostile value; the compiled path and the spec walk must agree on
"valid" and, when valid, on the result. A disagreement would let the fast path decide something
the schema does not say.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healthnode import codec, crypto
from healthnode.codec import SchemaViolation
from healthnode.protocol import schema
from healthnode.protocol.signed import Signed
from tests.strategies import all_messages, for_message

ALL_MESSAGES = all_messages()

HOSTILE: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 2**63, 2**64 - 1, 1.5, b"", b"\x00" * 31, b"\x00" * 32,
    b"\xff" * 33, b"x" * 65, "", "a", "clinician", "read", "\x00", "é" * 300, [], [b"\x00" * 32],
    [1, 2], [b"b" * 32, b"a" * 32], [b"a" * 32, b"a" * 32], [None], [[]], {}, [0, 1], [1, 1],
    [51, 1], [50, 1, "c", 0, 0, b"\x00" * 32],
)


def slow_from_wire(cls: type[Any], wire: list[Any]) -> Any:
    """The spec walk alone, as _message_from_wire runs it when the compiled path refuses."""
    fields = cls.WIRE_FIELDS
    if len(wire) != 2 + len(fields):
        raise SchemaViolation("message", "field count")
    return cls(**{name: spec.from_wire(value, name)
                  for (name, spec), value in zip(fields, wire[2:], strict=True)})


def damage(data: st.DataObject, value: Any) -> Any:
    """`value` with one item somewhere inside it replaced (or removed, or added)."""
    if type(value) is list and value and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(value) - 1))
        copy = list(value)
        action = data.draw(st.sampled_from(("descend", "replace", "drop", "append", "swap")))
        if action == "descend":
            copy[index] = damage(data, copy[index])
        elif action == "replace":
            copy[index] = data.draw(st.sampled_from(HOSTILE))
        elif action == "drop":
            del copy[index]
        elif action == "append":
            copy.append(copy[index])
        else:
            copy[0], copy[index] = copy[index], copy[0]
        return copy
    return data.draw(st.sampled_from(HOSTILE))


def outcome_fast(cls: type[Any], wire: Any) -> Any:
    try:
        return ("valid", cls._FAST_FROM_WIRE(wire))
    except (schema._Invalid, TypeError):
        return ("invalid", None)


def outcome_slow(cls: type[Any], wire: Any) -> Any:
    try:
        return ("valid", slow_from_wire(cls, wire))
    except (SchemaViolation, codec.UnknownKind):
        return ("invalid", None)


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda cls: cls.__name__)
@settings(max_examples=30, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_compiled_decoding_agrees_with_the_spec_walk(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(for_message(cls))
    wire = message.checked_to_wire()
    assert outcome_fast(cls, wire) == ("valid", message)
    for _ in range(8):
        damaged = damage(data, wire)
        if type(damaged) is not list or len(damaged) < 2 or damaged[:2] != wire[:2]:
            continue  # kind and version are checked before either path runs
        assert outcome_fast(cls, damaged) == outcome_slow(cls, damaged), damaged


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda cls: cls.__name__)
@settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_compiled_encoding_agrees_with_the_spec_walk(cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(for_message(cls))
    assert cls._FAST_TO_WIRE(message) == message.checked_to_wire()
    field, _ = data.draw(st.sampled_from(cls.WIRE_FIELDS))
    bad = data.draw(st.sampled_from((*HOSTILE, tuple(HOSTILE[20:23]), ())))
    damaged = dataclasses.replace(message, **{field: bad})
    try:
        fast = ("valid", cls._FAST_TO_WIRE(damaged))
    except (schema._Invalid, TypeError):
        fast = ("invalid", None)
    try:
        slow = ("valid", damaged.checked_to_wire())
    except SchemaViolation:
        slow = ("invalid", None)
    assert fast == slow
    if slow[0] == "invalid":
        with pytest.raises(SchemaViolation):  # to_wire names the field, whichever path ran
            damaged.to_wire()


SIGNED = [cls for cls in ALL_MESSAGES if issubclass(cls, Signed)]


@pytest.mark.parametrize("cls", SIGNED, ids=lambda cls: cls.__name__)
@settings(max_examples=10, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_unsigned_encoding_is_the_encoding_of_the_unsigned_wire(
        cls: type[Any], data: st.DataObject) -> None:
    message = data.draw(for_message(cls))
    assert message.unsigned_encoding() == codec.pack(message.unsigned_wire())
    identity = crypto.Identity.from_seed(bytes(32))
    signed = message.sign(identity, "chain")
    assert signed.signature_valid("chain")
    assert not signed.signature_valid("other-chain")
