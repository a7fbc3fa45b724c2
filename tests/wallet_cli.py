"""The wallet CLI as tests call it: a real `healthnode` process per command, with the test
passphrase in the environment; answers parsed as JSON; refusals checked to be one line naming
their code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster import Cluster, wait_for

PASSPHRASE = "correct horse battery staple"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "healthnode", *args]


def environment() -> dict[str, str]:
    return dict(os.environ, HEALTHNODE_PASSPHRASE=PASSPHRASE)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), env=environment(), capture_output=True, text=True,
                          timeout=120, check=False)


def ok(*args: str) -> Any:
    """Run a command that must succeed; its JSON output (or its text, if not JSON)."""
    result = run(*args)
    assert result.returncode == 0, f"healthnode {args[:2]} failed: {result.stderr[-2000:]}"
    return json.loads(result.stdout) if result.stdout.startswith(("{", "[")) else result.stdout


def refused(code: str, *args: str) -> str:
    """Run a command that must be refused with `code`; its one-line reason."""
    result = run(*args)
    assert result.returncode == 1, f"healthnode {args[:2]} should have been refused"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"a refusal is one line, got: {result.stderr[-2000:]}"
    assert f"({code})" in lines[0], lines[0]
    return lines[0]


@dataclass
class People:
    """Patients and providers on a test network: their key files and public keys by name."""

    cluster: Cluster
    dir: Path
    keys: dict[str, Path] = field(default_factory=dict)
    public: dict[str, str] = field(default_factory=dict)

    def new(self, who: str, kind: str) -> None:
        self.keys[who] = self.dir / f"{who}.key"
        self.public[who] = ok(kind, "new", "--out", str(self.keys[who]), "--genesis",
                              str(self.cluster.genesis_file))["public_key"]

    def wallet(self, index: int, who: str) -> list[str]:
        """`--node` (node `index`'s home) and `--as` (`who`'s key) for a wallet command."""
        return ["--node", str(self.cluster.homes[index]), "--as", str(self.keys[who])]

    def register(self, hospital: int, who: str, roles: list[str], display_name: str) -> None:
        """The hospital's operator vouches for a provider (admin socket, signed by the node),
        final on every running node."""
        done = self.cluster.admin(hospital, "provider_register", provider=self.public[who],
                                  roles=roles, display_name=display_name)
        self.cluster.wait_final([done["tx_hash"]], self.cluster.running(), 30)


# --- break-glass on a network whose key was generated (tests/test_keygen.py, test_founding.py)

def wait_for_key(cluster: Cluster, nodes: list[int], after_epoch: int = 0,
                 timeout_s: float = 90) -> dict[str, Any]:
    """The key state once every node in `nodes` holds a share of a key made after
    `after_epoch`."""
    def made() -> dict[str, Any] | None:
        states = [cluster.status(i)["emergency"] for i in nodes]
        if all(s is not None and s.get("epoch", 0) > after_epoch and s["my_index"] is not None
               for s in states):
            return states[0]
        return None
    state: dict[str, Any] = wait_for(made, timeout_s, "the emergency key's round to finish")
    return state


def break_glass_read(people: People, record_text: str, node: int = 0) -> dict[str, Any]:
    """A patient allows lab results for emergencies and adds one; an emergency physician
    reads it without a grant, through the holders' shares."""
    cluster = people.cluster
    if "patient" not in people.keys:
        people.new("patient", "patient")
        people.new("er", "provider")
        people.register(node, "er", ["clinician", "emergency"], "Dr ER")
        ok("emergency", "allow", *people.wallet(node, "patient"), "--category", "lab")
    source = people.dir / "lab.in"
    source.write_text(record_text)
    added = ok("record", "add", *people.wallet(node, "patient"), "--patient",
                   str(people.keys["patient"]), "--category", "lab", str(source))
    out = people.dir / "lab.out"
    reader = (node + 1) % len(cluster.running())
    read = ok("record", "get", *people.wallet(reader, "er"), added["record_id"], "--out",
              str(out), "--break-glass", "--purpose", "er-unconscious")
    assert out.read_text() == record_text
    threshold = cluster.status(reader)["emergency"]["threshold"]
    assert len(read["shares_from"]) == threshold and read["invalid_shares"] == []
    return read
