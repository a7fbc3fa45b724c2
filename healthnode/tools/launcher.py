"""The one way the tools start, watch and stop `healthnode run` processes: `scripts/localnet`, the
bench, the soak, the nemesis and the tests all launch nodes through `NodeProcess`.

A node runs as a child process with its output appended to `HOME/node.log`, under umask 077 and
with that log 0600, since both are in its home, which the node refuses when others may read
anything in it (home/modes.py). It is ready when its admin socket answers `status`. It is stopped
by SIGTERM (after SIGCONT: a paused node cannot act on a signal), and killed if it has not exited
within a grace period. A prefix (`ip netns exec NS`) runs it inside a network namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from healthnode.admin.client import AdminError, call
from healthnode.errors import HealthnodeError
from healthnode.home.config import load_config
from healthnode.home.modes import HOME_FILE_MODE, PRIVATE_UMASK

LOG_FILE: Final = "node.log"
STOP_GRACE_S: Final = 20.0
READY_POLL_S: Final = 0.1
LOG_TAIL_CHARS: Final = 3000


class LaunchError(HealthnodeError):
    """A node exited while starting, or did not answer in time; the message holds its log's end."""


@dataclass
class NodeProcess:
    home: Path
    prefix: Sequence[str] = ()  # e.g. ("ip", "netns", "exec", "hn0")
    cwd: Path | None = None  # the checkout whose code runs (python -m healthnode)
    new_session: bool = False  # out of the caller's process group (a terminal's Ctrl-C)
    entry: Sequence[str] = ("-m", "healthnode")  # what the interpreter runs, before `run`
    options: Sequence[str] = ()  # more options of `run`, e.g. ("--key-fd", "3")
    pass_fds: Sequence[int] = ()  # descriptors the node inherits (--key-fd, --passphrase-fd)
    env: Mapping[str, str] | None = None  # the node's environment (None: this process's)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        assert not self.running, f"{self.home} is running"
        fd = os.open(self.home / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, HOME_FILE_MODE)
        with os.fdopen(fd, "ab") as log:
            os.fchmod(fd, HOME_FILE_MODE)  # a log of an older release may be wider
            self.process = subprocess.Popen(
                [*self.prefix, sys.executable, *self.entry, "run", "--home", str(self.home),
                 *self.options],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, pass_fds=self.pass_fds,
                env=self.env, umask=PRIVATE_UMASK, start_new_session=self.new_session)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exited(self) -> bool:
        """Started, and no longer running."""
        return self.process is not None and self.process.poll() is not None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.running else None

    def send(self, sig: int) -> None:
        if self.process is not None and self.running:
            self.process.send_signal(sig)

    def pause(self) -> None:
        self.send(signal.SIGSTOP)

    def resume(self) -> None:
        self.send(signal.SIGCONT)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM (after SIGCONT), SIGKILL after `grace_s`; the exit code (None: never ran)."""
        stop_all([self], grace_s)
        return None if self.process is None else self.process.returncode

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """`sig` (SIGKILL by default, after SIGCONT), and wait for the exit; its code."""
        if self.process is None:
            return None
        self.send(signal.SIGCONT)
        self.send(sig)
        return self.process.wait(timeout=STOP_GRACE_S)

    def answers(self, timeout_s: float = 1.0) -> bool:
        """Whether its admin socket answers `status` now."""
        try:
            call(self.home / load_config(self.home).admin.socket, "status", timeout_s=timeout_s)
        except (AdminError, OSError):
            return False
        return True

    def wait_ready(self, timeout_s: float) -> None:
        """Until its admin socket answers; LaunchError if it exits first or takes too long."""
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.exited:
                raise LaunchError(f"{self.home.name} exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise LaunchError(f"{self.home.name} did not answer within {timeout_s:.0f} s:\n"
                                  f"{self.log_tail()}")
            time.sleep(READY_POLL_S)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        path = self.home / LOG_FILE
        try:
            with path.open("rb") as log:
                log.seek(max(0, path.stat().st_size - chars))
                return log.read().decode(errors="replace")
        except OSError:
            return ""


def stop_all(nodes: Iterable[NodeProcess], grace_s: float = STOP_GRACE_S) -> None:
    """Stop every node at once: SIGCONT and SIGTERM to each, then one shared grace period, then
    SIGKILL for any still running."""
    nodes = list(nodes)
    for node in nodes:
        node.send(signal.SIGCONT)
        node.send(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for node in nodes:
        if node.process is None:
            continue
        try:
            node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()

