"""Running a target under atheris for a budget of time or inputs, and what it found.

Each target runs in libFuzzer processes of its own (worker.py), one after another until the
budget is spent: libFuzzer stops at the first crash, hang or excess of memory, so the runner
keeps the input that caused it, and starts a new process on what is left of the budget, from
the corpus grown so far. Per target it adds up the inputs that libFuzzer executed and takes the
process's peak RSS from the kernel (wait4), so a process that died still reports both.

    OUT/corpus/<target>/      inputs that found new coverage (the seed corpus stays untouched)
    OUT/crashes/<target>/     crash-*, timeout-* (a hang) and oom-* inputs, as libFuzzer names them
    OUT/logs/<target>-<n>.log what each libFuzzer process printed
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from healthnode.errors import HealthnodeError
from healthnode.tools.fuzz.seeds import CORPUS
from healthnode.tools.fuzz.targets import TARGETS

# The checkout whose healthnode the workers import: the one this runner came from.
_PROJECT: Final = Path(__file__).resolve().parents[3]
_EXECUTED: Final = re.compile(rb"stat::number_of_executed_units:\s*(\d+)")
_EXCEPTION: Final = re.compile(rb"=== Uncaught Python exception: ===\n([^\n:]+)")
_FRAME: Final = re.compile(rb'File "([^"]+)", line (\d+), in ([^\n]+)')
_FINDING_KINDS: Final = {"crash": "crashes", "timeout": "hangs", "oom": "ooms"}


class FuzzError(HealthnodeError):
    """A libFuzzer process ended without finishing its budget and without a finding (atheris
    missing, a target that does not import)."""


@dataclass(frozen=True, slots=True)
class Options:
    seconds: float | None  # the time budget of each target; None: only `runs` bounds it
    runs: int | None  # the input budget of each target; None: only `seconds` bounds it
    out: Path
    timeout_s: int = 5  # an input that takes longer is a hang
    rss_limit_mb: int = 1024
    seed: int = 1
    findings_max: int = 10  # stop a target after this many crashes, hangs and ooms


@dataclass(slots=True)
class Outcome:
    """What fuzzing one target did."""

    target: str
    inputs: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    processes: int = 0
    crashes: list[Path] = field(default_factory=list)
    hangs: list[Path] = field(default_factory=list)
    ooms: list[Path] = field(default_factory=list)
    # What each finding was (an exception's type and the line that raised it), and how often:
    # a new process often finds the same one again from the corpus grown before it.
    kinds: dict[str, int] = field(default_factory=dict)
    first_finding_s: float | None = None  # when the first one was found, from the start
    first_finding_inputs: int | None = None  # and after how many inputs

    @property
    def exec_per_s(self) -> float:
        return self.inputs / self.seconds if self.seconds else 0.0

    @property
    def findings(self) -> int:
        return len(self.crashes) + len(self.hangs) + len(self.ooms)


def libfuzzer_arguments(name: str, options: Options, runs_left: int | None,
                        seconds_left: float | None, seed: int) -> list[str]:
    """The command line of one libFuzzer process of target `name`."""
    work = options.out / "corpus" / name
    artifacts = options.out / "crashes" / name
    arguments = [
        sys.executable, "-m", "healthnode.tools.fuzz.worker", name,
        f"-runs={runs_left if runs_left is not None else -1}",
        f"-timeout={options.timeout_s}", f"-rss_limit_mb={options.rss_limit_mb}",
        f"-max_len={TARGETS[name].max_len}", f"-artifact_prefix={artifacts}/",
        f"-seed={seed}", "-print_final_stats=1",
    ]
    if seconds_left is not None:
        arguments.append(f"-max_total_time={max(1, round(seconds_left))}")
    return [*arguments, str(work), str(CORPUS / name)]


def signature(kind: str, printed: bytes) -> str:
    """What a finding was, from what libFuzzer printed: the exception and the innermost line of
    the traceback for a crash, the kind for a hang or an excess of memory."""
    exception = _EXCEPTION.search(printed)
    if kind != "crash" or exception is None:
        return {"crash": "crash", "timeout": "hang", "oom": "out of memory"}[kind]
    frames = _FRAME.findall(printed[exception.end():])
    where = ""
    if frames:
        path, line, function = frames[-1]
        where = f" at {Path(path.decode()).name}:{line.decode()} ({function.decode().strip()})"
    return f"{exception.group(1).decode(errors='replace')}{where}"


def _findings(directory: Path) -> set[Path]:
    return {path for path in directory.iterdir()
            if path.name.split("-", 1)[0] in _FINDING_KINDS}


def fuzz_target(name: str, options: Options, log: Callable[[str], None]) -> Outcome:
    """Fuzz target `name` until its budget (time or inputs) is spent, or it found
    `options.findings_max` things."""
    assert options.seconds is not None or options.runs is not None
    for directory in ("corpus", "crashes", "logs"):
        (options.out / directory / name).mkdir(parents=True, exist_ok=True)
    outcome = Outcome(name)
    known = _findings(options.out / "crashes" / name)
    started = time.monotonic()
    while True:
        runs_left = None if options.runs is None else options.runs - outcome.inputs
        seconds_left = (None if options.seconds is None
                        else options.seconds - (time.monotonic() - started))
        if (runs_left is not None and runs_left <= 0) or (
                seconds_left is not None and seconds_left < 1):
            break
        log_path = options.out / "logs" / f"{name}-{outcome.processes}.log"
        arguments = libfuzzer_arguments(name, options, runs_left, seconds_left,
                                        options.seed + outcome.processes)
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(arguments, cwd=_PROJECT, stdin=subprocess.DEVNULL,
                                       stdout=log_file, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        outcome.processes += 1
        outcome.peak_rss_mb = max(outcome.peak_rss_mb, usage.ru_maxrss / 1024)
        printed = log_path.read_bytes()
        executed = _EXECUTED.findall(printed)
        outcome.inputs += int(executed[-1]) if executed else 0
        found = _findings(options.out / "crashes" / name) - known
        known |= found
        if found and outcome.first_finding_s is None:
            outcome.first_finding_s = time.monotonic() - started
            outcome.first_finding_inputs = outcome.inputs
        for path in sorted(found):
            kind = path.name.split("-", 1)[0]
            getattr(outcome, _FINDING_KINDS[kind]).append(path)
            what = signature(kind, printed)
            outcome.kinds[what] = outcome.kinds.get(what, 0) + 1
            log(f"{name}: {what}; input in {path} (log {log_path})")
        if process.returncode == 0 and executed:
            continue  # the budget is spent, or libFuzzer's whole seconds ended a little early
        if not found:
            tail = printed[-2000:].decode(errors="replace")
            raise FuzzError(f"{name}: libFuzzer exited with {process.returncode} and no "
                            f"finding (log {log_path}):\n{tail}")
        if outcome.findings >= options.findings_max:
            log(f"{name}: {outcome.findings} findings, stopping this target")
            break
    outcome.seconds = time.monotonic() - started
    return outcome


def table(outcomes: list[Outcome]) -> str:
    """The figures of each target, one line each, for people and for docs/reliability.md."""
    lines = ["| target | inputs | time (s) | exec/s | crashes | hangs | ooms | peak RSS (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {o.target} | {o.inputs:,} | {o.seconds:,.0f} | {o.exec_per_s:,.0f} | "
              f"{len(o.crashes)} | {len(o.hangs)} | {len(o.ooms)} | {o.peak_rss_mb:,.0f} |"
              for o in outcomes]
    return "\n".join(lines)
