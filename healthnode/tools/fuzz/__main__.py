"""`python -m healthnode.tools.fuzz` (what scripts/fuzz runs): fuzz the decoders of outside bytes.

    python -m healthnode.tools.fuzz [--seconds N] [--runs N] [--out DIR] [--timeout S]
                                    [--rss-limit-mb M] [--seed N] [--max-findings N]
                                    [TARGET...]
    python -m healthnode.tools.fuzz --list
    python -m healthnode.tools.fuzz --write-seeds [TARGET...]

Runs each target (all of them by default) under atheris for the time or the number of inputs
given (per target; both: whichever ends first; neither: 60 s), prints what each found and a table
of inputs, time, exec/s, crashes, hangs and peak RSS; exits 1 when anything was found, 2 on a
usage error. `--write-seeds` rewrites the seed corpus kept in the repository (seeds.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from healthnode.tools.fuzz.targets import TARGETS, printable_summary


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be positive")
        return value
    return parse


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/fuzz",
        description="fuzz the decoders of outside bytes with atheris (docs/reliability.md, "
                    "'Fuzzing')")
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"targets to run (all by default): {', '.join(TARGETS)}")
    parser.add_argument("--seconds", type=_positive(float), default=None,
                        help="time budget per target")
    parser.add_argument("--runs", type=_positive(int), default=None,
                        help="input budget per target")
    parser.add_argument("--out", type=Path, default=Path(".fuzz"),
                        help="grown corpus, findings and logs (.fuzz)")
    parser.add_argument("--timeout", type=_positive(int), default=5, metavar="SECONDS",
                        help="an input that runs longer is reported as a hang (5)")
    parser.add_argument("--rss-limit-mb", type=_positive(int), default=1024,
                        help="a process that grows past this is reported as out of memory "
                             "(1024)")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's seed (1)")
    parser.add_argument("--max-findings", type=_positive(int), default=10, metavar="N",
                        help="stop a target after N crashes, hangs and ooms (10)")
    parser.add_argument("--list", action="store_true", help="list the targets and stop")
    parser.add_argument("--write-seeds", action="store_true",
                        help="rewrite the seed corpus of the targets and stop")
    arguments = parser.parse_args(argv)
    unknown = sorted(set(arguments.targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse(sys.argv[1:] if argv is None else argv)
    names = arguments.targets or list(TARGETS)
    if arguments.list:
        print(printable_summary())
        return 0
    if arguments.write_seeds:
        from healthnode.tools.fuzz.seeds import write_corpus  # noqa: PLC0415

        for name, count in write_corpus(names).items():
            print(f"{name}: {count} seeds")
        return 0
    from healthnode.tools.fuzz.runner import FuzzError, Options, fuzz_target, table  # noqa: PLC0415

    options = Options(
        seconds=arguments.seconds if arguments.seconds or arguments.runs else 60.0,
        runs=arguments.runs, out=arguments.out.resolve(), timeout_s=arguments.timeout,
        rss_limit_mb=arguments.rss_limit_mb, seed=arguments.seed,
        findings_max=int(arguments.max_findings))

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    outcomes = []
    try:
        for name in names:
            outcome = fuzz_target(name, options, log)
            outcomes.append(outcome)
            log(f"{name}: {outcome.inputs:,} inputs in {outcome.seconds:,.0f} s "
                f"({outcome.exec_per_s:,.0f}/s), {len(outcome.crashes)} crashes, "
                f"{len(outcome.hangs)} hangs, {len(outcome.ooms)} ooms, peak RSS "
                f"{outcome.peak_rss_mb:,.0f} MiB")
            if outcome.first_finding_s is not None:
                log(f"{name}: the first finding after {outcome.first_finding_s:,.1f} s and "
                    f"{outcome.first_finding_inputs:,} inputs")
            for what, count in outcome.kinds.items():
                log(f"{name}:   {count} x {what}")
    except FuzzError as error:
        print(f"scripts/fuzz: error: {error}", file=sys.stderr)
        return 2
    print(table(outcomes))
    if any(outcome.findings for outcome in outcomes):
        print(f"findings are in {options.out / 'crashes'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
