"""A node's door budgets (ledger/door.py): node-wide, per window of the node's clock, named in
their refusals, charged only for what was taken; the uploads' budgets of the blob keeper over a
real store, kept across a restart; the config that sets them; and the wallet, which takes a
budget's refusal for a node that did nothing and tries its next one. The budgets at work on a
real node: tests/test_budgets_flood.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import pytest

from healthnode import limits
from healthnode.errors import ConfigError
from healthnode.home import config
from healthnode.ledger import door
from healthnode.ledger.rules import Rejected
from healthnode.net.blobs import BlobKeeper, UploadRefused
from healthnode.protocol.tx import (
    ACT_UNSIGNED,
    AnyTx,
    ConsentGrant,
    ConsentGrantPurposes,
    ConsentRevoke,
    ConsentRevokeProvider,
    EmergencyPolicy,
    ProviderRegister,
    RecordErase,
    RepresentativeAct,
    RepresentativeAppoint,
    RepresentativeEnd,
)
from healthnode.store.leveldb import ChainStore
from healthnode.wallet.connection import Refused, _next_node_may_serve
from tests.chain import AUTHORITIES, World, identity, tag
from tests.test_store import copy_into

MINUTE = limits.MINUTE_MS
DAY = limits.DAY_MS
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


def test_amounts_count_as_a_whole_and_a_day_is_a_utc_day() -> None:
    budgets = door.Budgets({"upload_bytes_per_day": 10_000})
    budgets.charge("upload_bytes_per_day", 9_000, DAY - 1)
    assert _reason(budgets.refusal("upload_bytes_per_day", 1_001, DAY - 1)) == \
        "budget_upload_bytes_per_day"
    assert budgets.refusal("upload_bytes_per_day", 1_000, DAY - 1) is None
    assert budgets.refusal("upload_bytes_per_day", 10_000, DAY) is None
    # What a day took before a restart counts after it, in that day only.
    again = door.Budgets({"upload_bytes_per_day": 10_000})
    again.restore("upload_bytes_per_day", again.window_of("upload_bytes_per_day", DAY - 1), 9_000)
    assert again.used("upload_bytes_per_day", DAY - 2) == 9_000
    assert again.used("upload_bytes_per_day", DAY) == 0


def test_each_kind_any_key_may_sign_has_its_budget_and_bytes_count_too() -> None:
    world = World()
    kinds: list[AnyTx] = [
        world.anchor(PATIENT, PATIENT, [LAB_TAG]),
        world.tx(ConsentGrant, PATIENT, grantee=identity("door-lab").public_key,
                 actions=("read",), scope_records=(), scope_tags=(LAB_TAG,),
                 expires_at_ms=None, key_wraps=(), tag_key_wrap=None),
        world.tx(ConsentGrantPurposes, PATIENT, grantee=identity("door-lab").public_key,
                 actions=("read",), scope_records=(), scope_tags=(LAB_TAG,),
                 expires_at_ms=None, key_wraps=(), tag_key_wrap=None,
                 purposes=("treatment",)),
        world.tx(ConsentRevoke, PATIENT, grant_id=b"\x01" * 32),
        world.tx(ConsentRevokeProvider, PATIENT, grantee=identity("door-lab").public_key),
        world.tx(RecordErase, PATIENT, record_id=b"\x02" * 32),
        world.tx(EmergencyPolicy, PATIENT, allowed_tags=(), wraps=()),
        world.tx(RepresentativeAppoint, PATIENT, representative=identity("door-rep").public_key,
                 scopes=("grant",), ends_at_ms=10**13, key_wraps=(), tag_key_wrap=None),
        world.tx(RepresentativeEnd, PATIENT, patient=PATIENT.public_key,
                 representative=identity("door-rep").public_key),
    ]
    assert {type(tx) for tx in kinds} == set(door.TX_BUDGETS)
    for tx in kinds:  # (both kinds of grant share a budget, and both of revoke)
        budgets = door.Budgets({name: 1 for name in door.TX_BUDGETS.values()}
                               | {door.TX_BYTES: 10**6})
        size = len(tx.encode())
        assert door.tx_refusal(budgets, tx, size, 0) is None
        door.charge_tx(budgets, tx, size, 0)
        assert _reason(door.tx_refusal(budgets, tx, size, 1)) == \
            door.code(door.TX_BUDGETS[type(tx)])
    small = door.Budgets({door.TX_BYTES: 100})
    assert _reason(door.tx_refusal(small, kinds[0], len(kinds[0].encode()), 0)) == \
        "budget_patient_tx_bytes_per_minute"


def test_a_representatives_act_counts_as_the_act_it_carries() -> None:
    world = World()
    representative = identity("door-representative")
    policy = EmergencyPolicy(signer=PATIENT.public_key, nonce=1, allowed_tags=(), wraps=(),
                             signature=ACT_UNSIGNED)
    act: AnyTx = RepresentativeAct(signer=b"", nonce=1, act=policy).sign(representative,
                                                                          world.genesis.chain_id)
    budgets = door.Budgets({"patient_policies_per_minute": 1})
    door.charge_tx(budgets, act, len(act.encode()), 0)
    assert _reason(door.tx_refusal(budgets, act, len(act.encode()), 1)) == \
        "budget_patient_policies_per_minute"


def test_patients_are_the_keys_that_are_neither_providers_nor_authorities() -> None:
    world = World()
    lab = identity("door-registered-lab")
    world.commit(world.tx(ProviderRegister, AUTHORITIES[0], provider=lab.public_key,
                          roles=("lab",), display_name="Door Lab"))
    assert door.is_patient(world.state, PATIENT.public_key)
    assert not door.is_patient(world.state, lab.public_key)
    assert not door.is_patient(world.state, AUTHORITIES[2].public_key)


class _Clock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


def _keeper(store: ChainStore, figures: dict[str, int], at_ms: int, **pending: int
            ) -> BlobKeeper:
    keeper = BlobKeeper(store, cast(Any, None), lambda: [], lambda _reason: None,
                        _Clock(at_ms), door.Budgets(figures), **pending)
    keeper.recover()
    return keeper


def _refused(keeper: BlobKeeper, uploader: bytes, data: bytes, at_ms: int) -> str:
    with pytest.raises(UploadRefused) as refused:
        keeper.upload(uploader, data, at_ms)
    return refused.value.code


def test_uploads_have_a_daily_budget_over_every_key_kept_across_a_restart(
        tmp_path: Path) -> None:
    """Patients' keys share one day's budget, every key another: fresh keys cannot take the
    providers' uploads, nor a restart give a day's budget back. The pending caps come first,
    per key and in all, each named by its key."""
    world = World()
    lab = identity("door-upload-lab")
    world.commit(world.tx(ProviderRegister, AUTHORITIES[0], provider=lab.public_key,
                          roles=("lab",), display_name="Door Lab"))
    figures = {"patient_upload_bytes_per_day": 3000, "upload_bytes_per_day": 5000}
    day_start = 20_000 * DAY
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        copy_into(store, world)
        keeper = _keeper(store, figures, day_start)
        fresh = [identity(f"door-fresh-{i}").public_key for i in range(4)]
        for index, key in enumerate(fresh[:3]):
            keeper.upload(key, bytes([index]) * 1000, day_start + index)
        assert _refused(keeper, fresh[3], b"\x09" * 1000, day_start + 5) == \
            "budget_patient_upload_bytes_per_day"
        keeper.upload(lab.public_key, b"\x0a" * 1000, day_start + 6)  # the providers' room
    with ChainStore.open(tmp_path / "chain", world.genesis) as store:
        keeper = _keeper(store, figures, day_start + 10)  # a restart, the same day
        assert store.uploads_today() == (20_000, 3000, 4000)
        assert _refused(keeper, fresh[3], b"\x09" * 1000, day_start + 10) == \
            "budget_patient_upload_bytes_per_day"
        keeper.upload(lab.public_key, b"\x0b" * 1000, day_start + 11)
        assert _refused(keeper, lab.public_key, b"\x0c" * 1000, day_start + 12) == \
            "budget_upload_bytes_per_day"
        # The next UTC day of the node's clock takes uploads again.
        keeper.upload(fresh[3], b"\x09" * 1000, day_start + DAY)
        assert store.uploads_today() == (20_001, 1000, 1000)

        capped = _keeper(store, {}, day_start + DAY, pending_bytes_max=6500,
                         pending_bytes_per_key_max=1500)
        assert _refused(capped, fresh[0], b"\x0d" * 1000, day_start + DAY) == "upload_quota"
        assert capped.pending_bytes == 6000
        capped.upload(identity("door-fresh-9").public_key, b"\x0e" * 500, day_start + DAY)
        assert _refused(capped, fresh[2], b"\x0f" * 1, day_start + DAY) == "node_upload_full"


def test_every_budget_is_a_key_of_the_budgets_section_with_a_default() -> None:
    fields = {field.name for field in dataclasses.fields(config.BudgetsSection)}
    assert set(door.WINDOWS) <= fields
    assert fields - set(door.WINDOWS) == {"pending_upload_bytes_per_key", "pending_upload_bytes"}
    assert all(len(door.code(name)) <= 40 for name in door.WINDOWS)  # a ClientError's code
    parsed = config.parse_config("[budgets]\npatient_policies_per_minute = 2\n"
                                 "pending_upload_bytes = 4096\n", "x.toml")
    assert parsed.budgets.patient_policies_per_minute == 2
    assert parsed.budgets.pending_upload_bytes == 4096
    assert parsed.budgets.upload_bytes_per_day == limits.UPLOAD_BYTES_PER_DAY


@pytest.mark.parametrize("text, message", [
    ("[budgets]\npatient_grants_per_minute = -1\n",
     r"x.toml: \[budgets\].patient_grants_per_minute: must be within 0\.\."),
    ("[budgets]\nupload_bytes_per_day = '1 GiB'\n",
     r"\[budgets\].upload_bytes_per_day: expected an integer"),
    ("[budgets]\nanchors_per_minute = 5\n", r"unknown key \[budgets\].anchors_per_minute"),
])
def test_a_bad_budget_names_its_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.parse_config(text, "x.toml")


def test_a_wallet_goes_on_to_its_next_node_after_a_budgets_refusal() -> None:
    """The node took nothing of the request; another node's door may have room."""
    assert _next_node_may_serve(Refused("budget_patient_anchors_per_minute", "..."))
    assert _next_node_may_serve(Refused("budget_upload_bytes_per_day", "..."))
    assert not _next_node_may_serve(Refused("signer_grants_per_day", "..."))  # the ledger's
    assert not _next_node_may_serve(Refused("grant_revoked", "..."))
