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

from tests.cluster import Cluster

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
