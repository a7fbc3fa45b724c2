"""Grants with purposes and revoke by provider (rules version 5), on a real 4-node network
through the wallet CLI: a read for research under a treatment-only grant is refused, naming the
grant's purposes, and the same read for treatment succeeds; `revoke --provider` ends three grants
in one transaction, and each of the three reads is then refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import wallet_cli as cli
from tests.cluster import Cluster

pytestmark = pytest.mark.slow  # a network and a dozen wallet commands: CI runs it (.ci/run)


def test_purposes_limit_reads_and_revoke_by_provider_ends_every_grant(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "net")
    cluster.start_all()
    try:
        people = cli.People(cluster, tmp_path)
        people.new("patient", "patient")
        people.new("doctor", "provider")
        people.register(0, "doctor", ["clinician"], "Dr Purpose")
        source = tmp_path / "lab.txt"
        source.write_text("HbA1c 5.4 %")
        record = cli.ok("record", "add", *people.wallet(0, "patient"), "--patient",
                        str(people.keys["patient"]), "--category", "lab",
                        str(source))["record_id"]

        def read(purpose: str, node: int = 1) -> list[str]:
            return ["record", "get", *people.wallet(node, "doctor"), record, "--purpose",
                    purpose, "--out", str(tmp_path / f"read-{purpose}")]

        treatment = cli.ok("grant", *people.wallet(0, "patient"), "--to",
                           str(people.keys["doctor"]), "--category", "lab",
                           "--purpose", "treatment")
        assert treatment["purposes"] == [{"purpose": "treatment", "code": "TREAT"}]

        # A read for research under the treatment-only grant is refused, naming its purposes.
        line = cli.refused("purpose_not_granted", *read("research"))
        assert "treatment (TREAT) only, not for research (HRESCH)" in line
        # The same read for treatment succeeds.
        cli.ok(*read("treatment"))
        assert (tmp_path / "read-treatment").read_text() == "HbA1c 5.4 %"

        # Two more grants to the same doctor; each of the three reads goes under its own.
        research = cli.ok("grant", *people.wallet(2, "patient"), "--to",
                          str(people.keys["doctor"]), "--category", "lab",
                          "--purpose", "research")
        payment = cli.ok("grant", *people.wallet(3, "patient"), "--to",
                         str(people.keys["doctor"]), "--record", record,
                         "--purpose", "payment")
        grants = {treatment["grant_id"], research["grant_id"], payment["grant_id"]}
        listed = cli.ok("grant", "list", *people.wallet(1, "patient"), "--json")
        assert {g["grant_id"]: [p["code"] for p in g["purposes"]] for g in listed} == {
            treatment["grant_id"]: ["TREAT"], research["grant_id"]: ["HRESCH"],
            payment["grant_id"]: ["HPAYMT"]}
        for purpose in ("treatment", "research", "payment"):
            cli.ok(*read(purpose, node=2))

        # One transaction revokes all three; the wallet lists them, proven revoked there.
        revoked = cli.ok("revoke", *people.wallet(1, "patient"), "--provider",
                         people.public["doctor"])
        assert len(revoked["heights"]) == 1
        assert {g["grant_id"] for g in revoked["revoked"]} == grants
        assert {g["revoked_height"] for g in revoked["revoked"]} == set(revoked["heights"])
        for purpose in ("treatment", "research", "payment"):
            cli.refused("record_not_readable", *read(purpose, node=3))
        cli.refused("no_grant_to_revoke", "revoke", *people.wallet(0, "patient"),
                    "--provider", people.public["doctor"])
    finally:
        cluster.close()


