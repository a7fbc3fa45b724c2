"""`healthnode localnet --demo`: the product in two minutes, on the local network just started.

A patient, a clinician at each of two hospitals, a lab result, a grant, a read through another
hospital, a revoke, a refused read, an emergency policy and a break-glass read by an emergency
physician at a third hospital, and the audit trail, each step printed as it happens. It uses
the same wallet code and admin methods as the CLI, with fresh keys in `<dir>/demo-<time>/` so it
can run again on a resumed network.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from healthnode.admin.client import call
from healthnode.crypto import Identity
from healthnode.home import keys
from healthnode.home.config import GENESIS_FILE, load_config, load_genesis
from healthnode.wallet import trust
from healthnode.wallet.commands import Wallet
from healthnode.wallet.connection import Refused, connect, run_wallet

DEMO_PASSPHRASE: Final = "localnet-demo-only"  # noqa: S105 (printed: these are demo keys)
LAB_RESULT: Final = {
    "resourceType": "Observation",
    "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                              "observation-category", "code": "laboratory"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3",
                         "display": "Potassium [Moles/volume] in Serum or Plasma"}]},
    "effectiveDateTime": "2026-11-25T08:30:00Z",
    "valueQuantity": {"value": 4.1, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                      "code": "mmol/L"},
}


ALLERGY: Final = {
    "resourceType": "AllergyIntolerance",
    "patient": {"reference": "Patient/demo"},
    "code": {"text": "penicillin"},
    "criticality": "high",
}


def run_demo(node_dirs: list[Path], say: Callable[[str], None]) -> None:
    demo = _Demo.cast(node_dirs, say)
    demo.register_providers()
    record = demo.share_a_lab_result()
    demo.break_the_glass(record)
    demo.show_the_audit_trail()
    say("demo: done")


@dataclass
class _Demo:
    """The demo's people (keys in `workdir`, each pinned to the network) and hospitals: A, B
    and C are the first three nodes (fewer nodes play several parts), `last` the last node."""

    node_dirs: list[Path]
    say: Callable[[str], None]
    workdir: Path
    people: dict[str, Identity]
    pins: dict[str, trust.Pin | bytes]

    @classmethod
    def cast(cls, node_dirs: list[Path], say: Callable[[str], None]) -> _Demo:
        """Fresh keys for the patient and three doctors, each pinned to the network (its
        genesis file, as a hospital would hand it out)."""
        workdir = node_dirs[0].parent / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
        workdir.mkdir()
        people = {}
        for name, kind in [("patient", "patient"), ("dr-ada", "provider"),
                           ("dr-ben", "provider"), ("dr-cruz", "provider")]:
            people[name] = keys.create_key_file(workdir / f"{name}.key", kind, DEMO_PASSPHRASE)
        genesis = load_genesis(node_dirs[0] / GENESIS_FILE)
        pins = {name: trust.pin_for(workdir / f"{name}.key", genesis) for name in people}
        say(f"demo: keys in {workdir} (passphrase {DEMO_PASSPHRASE!r}); the patient is "
            f"{people['patient'].public_key.hex()[:16]}..., known to the network by that key "
            f"only")
        return cls(node_dirs, say, workdir, people, pins)

    @property
    def hospital_a(self) -> Path:
        return self.node_dirs[0]

    @property
    def hospital_b(self) -> Path:
        return self.node_dirs[1 % len(self.node_dirs)]

    @property
    def hospital_c(self) -> Path:
        return self.node_dirs[2 % len(self.node_dirs)]

    def admin(self, home: Path, method: str, **params: Any) -> Any:
        return call(home / load_config(home).admin.socket, method, params)

    async def _as_person(self, name: str, home: Path, step: Callable[[Wallet], Any]) -> Any:
        identity = self.people[name]
        async with connect(identity, str(home)) as connection:
            pin = self.pins[name]
            assert isinstance(pin, trust.Pin), "pinned from a genesis file"
            return await step(Wallet(identity, connection, pin))

    def wallet(self, name: str, home: Path, step: Callable[[Wallet], Any]) -> Any:
        """Run one wallet step as `name` through the node at `home`."""
        return run_wallet(partial(self._as_person, name, home, step))

    def register_providers(self) -> None:
        """Each hospital's operator registers its doctor; dr-cruz also for emergencies."""
        for doctor, home in [("dr-ada", self.hospital_a), ("dr-ben", self.hospital_b)]:
            done = self.admin(home, "provider_register",
                              provider=self.people[doctor].public_key.hex(),
                              roles=["clinician"], display_name=doctor)
            self.say(f"demo: {home.name}'s operator registers {doctor} as a clinician "
                     f"(final at height {done['height']})")
        done = self.admin(self.hospital_c, "provider_register",
                          provider=self.people["dr-cruz"].public_key.hex(),
                          roles=["clinician", "emergency"], display_name="dr-cruz")
        self.say(f"demo: {self.hospital_c.name}'s operator registers dr-cruz as an emergency "
                 f"physician (final at height {done['height']})")

    def share_a_lab_result(self) -> bytes:
        """The patient adds a lab result, grants dr-ben, who reads it, and revokes the grant;
        dr-ada (no grant) and dr-ben (revoked) are refused. Returns the record's id."""
        say, wallet = self.say, self.wallet
        hospital_a, hospital_b = self.hospital_a, self.hospital_b
        patient = self.people["patient"].public_key
        added = wallet("patient", hospital_a, lambda w: w.add_record(
            patient, ["lab"], json.dumps(LAB_RESULT).encode()))
        record = bytes.fromhex(added["record_id"])
        say(f"demo: the patient's wallet encrypts a FHIR lab result (potassium 4.1 mmol/L), "
            f"uploads the ciphertext to {hospital_a.name} and anchors it: record "
            f"{added['record_id'][:16]}... final at height {added['height']}")
        _refused(say, f"dr-ada reads it through {hospital_a.name} without a grant", lambda: wallet(
            "dr-ada", hospital_a, lambda w: w.get_record(record, "treatment", None)))
        granted = wallet("patient", hospital_b, lambda w: w.grant(
            self.people["dr-ben"].public_key, ["lab"], [], False, 30 * 86_400_000))
        say(f"demo: the patient grants dr-ben read access to 'lab' records for 30 days: grant "
            f"{granted['grant_id'][:16]}... (the record's key is re-wrapped for dr-ben)")
        plaintext, read = wallet("dr-ben", hospital_b, lambda w: w.get_record(
            record, "treatment", "follow-up of the potassium level"))
        value = json.loads(plaintext)["valueQuantity"]
        say(f"demo: dr-ben reads the record through {hospital_b.name}: potassium "
            f"{value['value']} {value['unit']} (the read's access.log was final at height "
            f"{read['access_height']} before the record was released)")
        revoked = wallet("patient", hospital_a, lambda w: w.revoke(
            bytes.fromhex(granted["grant_id"])))
        say(f"demo: the patient revokes the grant (final at height {revoked['revoked_height']})")
        _refused(say, "dr-ben reads it again", lambda: wallet(
            "dr-ben", hospital_b, lambda w: w.get_record(record, "treatment", None)))
        return record

    def break_the_glass(self, lab_record: bytes) -> None:
        """The patient's emergency policy and an allergy record; dr-cruz may break the glass on
        the allergy, not on the lab result."""
        say, wallet = self.say, self.wallet
        hospital_a, hospital_c = self.hospital_a, self.hospital_c
        patient = self.people["patient"].public_key
        policy = wallet("patient", hospital_a, lambda w: w.emergency_set(["allergy"], []))
        say(f"demo: the patient lets emergency staff read 'allergy' records without a grant "
            f"(policy final at height {policy['height']})")
        allergy = wallet("patient", hospital_a, lambda w: w.add_record(
            patient, ["allergy"], json.dumps(ALLERGY).encode()))
        say(f"demo: the patient adds a penicillin allergy; its data key is also wrapped for the "
            f"network's emergency key, which no single hospital holds: record "
            f"{allergy['record_id'][:16]}...")
        _refused(say, "dr-cruz breaks the glass on the lab result (not allowed for emergencies)",
                 lambda: wallet("dr-cruz", hospital_c, lambda w: w.break_glass(
                     lab_record, "er-unconscious", None)))
        emergency_text, emergency = wallet("dr-cruz", hospital_c, lambda w: w.break_glass(
            bytes.fromhex(allergy["record_id"]), "er-unconscious", "arrived unconscious"))
        say(f"demo: dr-cruz breaks the glass on the allergy record: "
            f"{json.loads(emergency_text)['code']['text']} allergy, read with decryption shares "
            f"of hospitals {emergency['shares_from']} (each logged the read before releasing its "
            f"share)")

    def show_the_audit_trail(self) -> None:
        trail = self.wallet("patient", self.node_dirs[-1], lambda w: w.audit())
        self.say(f"demo: the patient's audit trail ({len(trail)} lines):")
        for line in trail:
            flag = "BREAK-GLASS " if line["break_glass"] else ""
            self.say(f"demo:   height {line['height']}: {flag}record {line['record_id'][:16]}... "
                     f"read by {line['reader_name'] or line['reader'][:16]} through "
                     f"{line['hospital_name'] or line['hospital'][:16]}, purpose "
                     f"{line['purpose']}, note: {line['note']!r}")


def _refused(say: Callable[[str], None], what: str, attempt: Callable[[], Any]) -> None:
    try:
        attempt()
    except Refused as refused:
        say(f"demo: {what}: refused ({refused.code})")
        return
    raise AssertionError(f"demo: {what} was not refused")
