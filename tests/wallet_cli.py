"""The wallet CLI as tests call it: a real `healthnode` process per command, with the test
passphrase in the environment; answers parsed as JSON; refusals checked to be one line naming
their code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

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
