"""A node's door budgets (ledger/door.py): node-wide, per window of the node's clock, named in
their refusals, charged only for what was taken; the config that sets them; and the wallet,
which takes a budget's refusal for a node that did nothing and tries its next one. The budgets
at work on a real node: tests/test_budgets_flood.py."""

from __future__ import annotations

import dataclasses

import pytest

from healthnode import limits
from healthnode.errors import ConfigError
from healthnode.home import config
from healthnode.ledger import door
from healthnode.ledger.rules import Rejected
from healthnode.protocol.tx import (
    AnyTx,
    ConsentGrant,
    ConsentRevoke,
    EmergencyPolicy,
    ProviderRegister,
    RecordErase,
)
from healthnode.wallet.connection import Refused, _next_node_may_serve
from tests.chain import AUTHORITIES, World, identity, tag

MINUTE = limits.MINUTE_MS
PATIENT = identity("door-patient")
LAB_TAG = tag(b"d" * 32, "lab")


def _reason(refusal: Rejected | None) -> str | None:
    return None if refusal is None else refusal.reason


def test_a_budget_takes_its_figure_in_each_window_and_names_itself() -> None:
    budgets = door.Budgets({"patient_grants_per_minute": 3})
    at = 7 * MINUTE + 5
    for _ in range(3):
        assert budgets.refusal("patient_grants_per_minute", 1, at) is None
        budgets.charge("patient_grants_per_minute", 1, at)
    refusal = budgets.refusal("patient_grants_per_minute", 1, at + 50_000)
    assert refusal is not None and refusal.reason == "budget_patient_grants_per_minute"
    assert refusal.detail.startswith("[budgets].patient_grants_per_minute = 3: ")
    assert "consent.grant a minute from patients' keys" in refusal.detail
    # The next minute of the node's clock takes three again.
    assert budgets.refusal("patient_grants_per_minute", 1, 8 * MINUTE) is None
    assert budgets.used("patient_grants_per_minute", 8 * MINUTE) == 0
    # A budget this node does not set refuses nothing.
    assert budgets.refusal("patient_anchors_per_minute", 10**9, at) is None


def test_a_budget_counts_amounts_as_a_whole() -> None:
    budgets = door.Budgets({"patient_tx_bytes_per_minute": 10_000})
    budgets.charge("patient_tx_bytes_per_minute", 9_000, MINUTE - 1)
    assert _reason(budgets.refusal("patient_tx_bytes_per_minute", 1_001, MINUTE - 1)) == \
        "budget_patient_tx_bytes_per_minute"
    assert budgets.refusal("patient_tx_bytes_per_minute", 1_000, MINUTE - 1) is None
    assert budgets.refusal("patient_tx_bytes_per_minute", 10_000, MINUTE) is None


def test_each_kind_any_key_may_sign_has_its_budget_and_bytes_count_too() -> None:
    world = World()
    kinds: list[AnyTx] = [
        world.anchor(PATIENT, PATIENT, [LAB_TAG]),
        world.tx(ConsentGrant, PATIENT, grantee=identity("door-lab").public_key,
                 actions=("read",), scope_records=(), scope_tags=(LAB_TAG,),
                 expires_at_ms=None, key_wraps=(), tag_key_wrap=None),
        world.tx(ConsentRevoke, PATIENT, grant_id=b"\x01" * 32),
        world.tx(RecordErase, PATIENT, record_id=b"\x02" * 32),
        world.tx(EmergencyPolicy, PATIENT, allowed_tags=(), wraps=()),
    ]
    assert {type(tx) for tx in kinds} == set(door.TX_BUDGETS)
    budgets = door.Budgets({name: 1 for name in door.TX_BUDGETS.values()}
                           | {door.TX_BYTES: 10**6})
    for tx in kinds:
        size = len(tx.encode())
        assert door.tx_refusal(budgets, tx, size, 0) is None
        door.charge_tx(budgets, tx, size, 0)
        assert _reason(door.tx_refusal(budgets, tx, size, 1)) == \
            door.code(door.TX_BUDGETS[type(tx)])
    small = door.Budgets({door.TX_BYTES: 100})
    assert _reason(door.tx_refusal(small, kinds[0], len(kinds[0].encode()), 0)) == \
        "budget_patient_tx_bytes_per_minute"


def test_patients_are_the_keys_that_are_neither_providers_nor_authorities() -> None:
    world = World()
    lab = identity("door-registered-lab")
    world.commit(world.tx(ProviderRegister, AUTHORITIES[0], provider=lab.public_key,
                          roles=("lab",), display_name="Door Lab"))
    assert door.is_patient(world.state, PATIENT.public_key)
    assert not door.is_patient(world.state, lab.public_key)
    assert not door.is_patient(world.state, AUTHORITIES[2].public_key)


def test_every_budget_is_a_key_of_the_budgets_section_with_a_default() -> None:
    fields = {field.name for field in dataclasses.fields(config.BudgetsSection)}
    assert set(door.WINDOWS) == fields
    assert all(len(door.code(name)) <= 40 for name in door.WINDOWS)  # a ClientError's code
    parsed = config.parse_config("[budgets]\npatient_policies_per_minute = 2\n", "x.toml")
    assert parsed.budgets.patient_policies_per_minute == 2
    assert parsed.budgets.patient_grants_per_minute == limits.PATIENT_GRANTS_PER_MINUTE


@pytest.mark.parametrize("text, message", [
    ("[budgets]\npatient_grants_per_minute = -1\n",
     r"x.toml: \[budgets\].patient_grants_per_minute: must be within 0\.\."),
    ("[budgets]\npatient_tx_bytes_per_minute = '1 MiB'\n",
     r"\[budgets\].patient_tx_bytes_per_minute: expected an integer"),
    ("[budgets]\nanchors_per_minute = 5\n", r"unknown key \[budgets\].anchors_per_minute"),
])
def test_a_bad_budget_names_its_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse_config(text, "x.toml")


def test_a_wallet_goes_on_to_its_next_node_after_a_budgets_refusal() -> None:
    """The node took nothing of the request; another node's door may have room."""
    assert _next_node_may_serve(Refused("budget_patient_anchors_per_minute", "..."))
    assert _next_node_may_serve(Refused("budget_patient_grants_per_minute", "..."))
    assert not _next_node_may_serve(Refused("signer_grants_per_day", "..."))  # the ledger's
    assert not _next_node_may_serve(Refused("grant_revoked", "..."))
