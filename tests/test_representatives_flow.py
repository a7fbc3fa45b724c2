"""Representatives end to end on a real 4-node network, through the wallet CLI (issue 31): a
parent appointed for a child grants a clinician with purposes and revokes it, grants again and
revokes by provider; the child's audit shows the parent as the actor of each; the appointment
ends at its date (block time) and the parent's next grant is refused; a representative scoped
to read only is refused a grant; one that may write adds a record for the patient."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests import wallet_cli as cli
from tests.cluster import Cluster

# A network, an appointment that runs 20 s and fourteen wallet commands (about 30 s): CI
# runs it (.ci/run).
pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fhir" / "bundle-healthy-1.json"
APPOINTMENT_S = 20  # long enough for two grants and two revokes to be final, short for a test


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cli.People]:
    root = tmp_path_factory.mktemp("representatives")
    cluster = Cluster(root / "net")
    cluster.start_all()
    try:
        people = cli.People(cluster, root)
        for who, kind in [("child", "patient"), ("parent", "patient"), ("aunt", "patient"),
                          ("carer", "patient"), ("clinician", "provider")]:
            people.new(who, kind)
        people.register(0, "clinician", ["clinician"], "Dr Child")
        yield people
    finally:
        cluster.close()


def test_a_parent_grants_and_revokes_for_a_child_until_the_appointment_ends(
        people: cli.People) -> None:
    until = datetime.fromtimestamp(time.time() + APPOINTMENT_S, UTC).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
    appointed = cli.ok("representative", "appoint", *people.wallet(0, "child"), "--to",
                       str(people.keys["parent"]), "--scope", "grant", "--until", until)
    assert appointed["scopes"] == ["grant"]
    child = str(people.keys["child"])
    granted = cli.ok("grant", *people.wallet(1, "parent"), "--for", child, "--to",
                     people.public["clinician"], "--category", "lab", "--purpose", "research",
                     "--purpose", "treatment")
    assert granted["patient"] == people.public["child"]
    revoked = cli.ok("revoke", *people.wallet(2, "parent"), "--for", child, granted["grant_id"])
    assert revoked["revoked_height"] > granted["height"]
    # a grant for the default purpose (treatment), ended with every grant to the clinician
    again = cli.ok("grant", *people.wallet(3, "parent"), "--for", child, "--to",
                   people.public["clinician"], "--category", "lab")
    by_provider = cli.ok("revoke", *people.wallet(0, "parent"), "--for", child, "--provider",
                         people.public["clinician"])
    assert by_provider["revoked_height"] > again["height"]
    # the grants are the child's, with their purposes, revoked; the child's audit names the
    # parent for each act
    listed = {g["grant_id"]: g for g in cli.ok("grant", "list", *people.wallet(3, "child"),
                                                "--json")}
    assert listed[granted["grant_id"]]["revoked_height"] == revoked["revoked_height"]
    assert [p["purpose"] for p in listed[granted["grant_id"]]["purposes"]] == [
        "research", "treatment"]
    assert listed[again["grant_id"]]["revoked_height"] == by_provider["revoked_height"]
    assert [p["purpose"] for p in listed[again["grant_id"]]["purposes"]] == ["treatment"]
    acts = [line for line in cli.ok("audit", *people.wallet(0, "child"), "--json")
            if line["kind"] == "act"]
    parent = people.public["parent"]
    assert [(a["act"], a["representative"]) for a in acts] == [
        ("consent.grant_purposes", parent), ("consent.revoke", parent),
        ("consent.grant_purposes", parent), ("consent.revoke_provider", parent)]
    shown = cli.ok("audit", *people.wallet(0, "child"))
    assert f"consent.grant_purposes by representative {parent[:16]} for you" in shown
    # at its date the appointment ends by block time: the parent's next grant is refused
    time.sleep(max(0.0, appointed["ends_at_ms"] / 1000 - time.time()) + 1.5)
    cli.refused("appointment_not_in_force", "grant", *people.wallet(1, "parent"), "--for",
                child, "--to", people.public["clinician"], "--category", "lab")


def test_a_representative_that_may_only_read_is_refused_a_grant(people: cli.People) -> None:
    cli.ok("representative", "appoint", *people.wallet(0, "child"), "--to",
           str(people.keys["aunt"]), "--scope", "read", "--until", "30d")
    cli.refused("outside_appointment_scope", "grant", *people.wallet(0, "aunt"), "--for",
                str(people.keys["child"]), "--to", people.public["clinician"], "--category",
                "lab")


def test_a_representative_that_may_write_adds_a_record_for_the_patient(
        people: cli.People) -> None:
    """A carer appointed with the scope `write` adds a record for the patient with `record add
    --patient`: the tag key comes from the appointment, and the record is the patient's, with
    the carer as its author."""
    cli.ok("representative", "appoint", *people.wallet(0, "child"), "--to",
           str(people.keys["carer"]), "--scope", "write", "--until", "30d")
    added = cli.ok("record", "add", *people.wallet(1, "carer"), "--patient",
                   people.public["child"], "--category", "lab", str(FIXTURE))
    listed = {r["record_id"]: r for r in cli.ok("record", "list", *people.wallet(2, "child"),
                                                  "--json")}
    record = listed[added["record_id"]]
    assert record["author"] == people.public["carer"] and record["categories"] == ["lab"]
