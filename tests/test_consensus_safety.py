"""The double-sign guard's persisted state and its decisions."""

from __future__ import annotations

import pytest

from healthnode.consensus import safety
from healthnode.consensus.safety import Decision, SafetyState, SafetyStateError
from healthnode.protocol.block import PRECOMMIT, PREVOTE
from healthnode.protocol.schema import replace
from tests.consensus_harness import Harness

X = b"\x0a" * 32
Y = b"\x0b" * 32


def prevoted_x_in_round_2() -> SafetyState:
    return safety.record(None, 7, 2, PREVOTE, X)


def test_safety_state_round_trips_through_its_encoding() -> None:
    state = safety.with_lock(safety.record(prevoted_x_in_round_2(), 7, 2, PRECOMMIT, X),
                             2, X, 2, X)
    assert safety.decode_safety_state(state.encode()) == state


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x01\x02\x03", bytes(2048)])
def test_unreadable_safety_state_is_an_error_not_a_crash(data: bytes) -> None:
    with pytest.raises(SafetyStateError):
        safety.decode_safety_state(data)


def test_lock_without_its_hash_is_rejected_on_read() -> None:
    state = replace(prevoted_x_in_round_2(), locked_round=1)
    with pytest.raises(SafetyStateError, match="locked"):
        safety.decode_safety_state(state.encode())


def test_lock_in_a_round_never_precommitted_is_rejected_on_read() -> None:
    state = safety.with_lock(prevoted_x_in_round_2(), 2, X, 2, X)
    with pytest.raises(SafetyStateError, match="never precommitted"):
        safety.decode_safety_state(state.encode())


def test_nothing_signed_allows_signing() -> None:
    assert safety.decide(None, 1, 0, PREVOTE, X) == (Decision.SIGN, X)


def test_same_round_resends_the_persisted_value_not_a_new_one() -> None:
    assert safety.decide(prevoted_x_in_round_2(), 7, 2, PREVOTE, Y) == (Decision.RESEND, X)


def test_same_round_nil_is_resent_as_nil() -> None:
    state = safety.record(None, 7, 2, PREVOTE, None)
    assert safety.decide(state, 7, 2, PREVOTE, X) == (Decision.RESEND, None)


def test_earlier_round_is_refused() -> None:
    assert safety.decide(prevoted_x_in_round_2(), 7, 1, PREVOTE, X)[0] is Decision.REFUSE


def test_later_round_and_later_height_may_be_signed() -> None:
    state = prevoted_x_in_round_2()
    assert safety.decide(state, 7, 3, PREVOTE, Y) == (Decision.SIGN, Y)
    assert safety.decide(state, 8, 0, PREVOTE, Y) == (Decision.SIGN, Y)


def test_each_kind_of_signature_is_guarded_separately() -> None:
    state = prevoted_x_in_round_2()
    assert safety.decide(state, 7, 2, PRECOMMIT, None) == (Decision.SIGN, None)
    assert safety.decide(state, 7, 2, safety.PROPOSAL, Y) == (Decision.SIGN, Y)


def test_state_of_a_later_height_refuses_everything() -> None:
    state = safety.SafetyState.empty(9)
    assert safety.decide(state, 8, 5, PRECOMMIT, X)[0] is Decision.REFUSE


def test_recording_a_new_height_forgets_the_old_lock() -> None:
    locked = safety.with_lock(safety.record(None, 7, 2, PRECOMMIT, X), 2, X, 2, X)
    moved = safety.record(locked, 8, 0, PREVOTE, Y)
    assert (moved.height, moved.locked_round, moved.locked_hash) == (8, -1, None)


def test_valid_block_and_its_proof_of_lock_round_trip() -> None:
    h = Harness()
    h.start(0)
    block = h.block(1)
    proof = tuple(h.vote(i, PREVOTE, 2, block.hash) for i in (0, 1, 2))
    state = safety.with_lock(safety.record(None, 1, 2, PRECOMMIT, block.hash), 2, block.hash,
                             2, block.hash, block, proof)
    assert safety.decode_safety_state(state.encode()) == state


def test_proof_of_lock_for_another_block_is_rejected_on_read() -> None:
    h = Harness()
    h.start(0)
    block = h.block(1)
    wrong = (h.vote(1, PREVOTE, 2, b"\x0c" * 32),)
    state = safety.with_lock(safety.record(None, 1, 2, PRECOMMIT, block.hash), 2, block.hash,
                             2, block.hash, block, wrong)
    with pytest.raises(SafetyStateError, match="proof of lock"):
        safety.decode_safety_state(state.encode())
