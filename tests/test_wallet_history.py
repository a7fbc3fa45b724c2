"""A patient's everyday tools on a real network, through the wallet CLI (issue 31): `record
history` shows an amended record's three versions in order, and `audit --follow` prints a read
made by another wallet within a block of its finality, and goes on through another node when
the one it follows goes away."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
from pathlib import Path

import pytest

from tests import wallet_cli as cli
from tests.cluster import Cluster

pytestmark = pytest.mark.slow  # about 32 s: CI runs it (.ci/run)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "fhir" / "bundle-healthy-1.json"


def test_record_history_and_a_followed_audit(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "net")
    follower: subprocess.Popen[str] | None = None
    try:
        cluster.start_all()
        people = cli.People(cluster, tmp_path)
        people.new("patient", "patient")
        people.new("clinician", "provider")
        people.register(1, "clinician", ["clinician"], "Dr History")
        patient = people.wallet(0, "patient")
        versions = []
        for _ in range(3):
            amends = ["--supersedes", versions[-1]] if versions else []
            added = cli.ok("record", "add", *patient, "--patient", people.public["patient"],
                           "--category", "lab", *amends, str(FIXTURE))
            versions.append(added["record_id"])
        # From the middle version, the whole chain, oldest first, each version proven.
        history = cli.ok("record", "history", *patient, versions[1], "--json")
        assert [v["record_id"] for v in history] == versions
        assert [v["version"] for v in history] == [1, 2, 3]
        assert [v["current"] for v in history] == [False, False, True]
        assert {v["author"] for v in history} == {people.public["patient"]}
        heights = [v["height"] for v in history]
        assert heights == sorted(heights) and all(v["readable"] for v in history)
        shown = cli.ok("record", "history", *patient, versions[2])
        assert [line.split()[0] for line in shown.splitlines()] == ["v1", "v2", "v3"]

        # The patient follows its audit through node 2, then node 3 when node 2 goes away.
        follower = subprocess.Popen(
            cli.command("audit", "--node", str(cluster.homes[2]), "--node",
                        str(cluster.homes[3]), "--as", str(people.keys["patient"]),
                        "--follow", "--json"),
            env=cli.environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[dict[str, object]] = queue.Queue()

        def read() -> None:
            assert follower is not None and follower.stdout is not None
            for line in follower.stdout:
                lines.put(json.loads(line))
        threading.Thread(target=read, daemon=True).start()
        cli.ok("grant", *patient, "--to", people.public["clinician"], "--category", "lab")

        def read_and_wait_for_the_line(node: int) -> None:
            out = tmp_path / f"read-{node}.json"
            cli.ok("record", "get", *people.wallet(node, "clinician"), versions[2], "--out",
                   str(out))
            final = cluster.height(0)  # the read's access.log is final by now
            line = lines.get(timeout=15)
            assert line["record_id"] == versions[2] and line["reader"] == \
                people.public["clinician"] and line["break_glass"] is False
            # Printed within a block of its finality.
            assert int(str(line["height"])) <= final and cluster.height(0) <= final + 1

        read_and_wait_for_the_line(1)
        cluster.kill(2)
        read_and_wait_for_the_line(0)
        assert lines.empty()  # nothing printed twice
        assert follower.poll() is None  # still following
    finally:
        if follower is not None:
            follower.kill()
            follower.wait(10)
        cluster.close()
