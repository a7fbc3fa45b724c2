"""`healthnode soak ...` (or `python -m healthnode.tools.soak`): a soak of a real local network.

    healthnode soak --nodes 4 --duration 7200 --out DIR [--seed N] [--wallets-at-once 10]
                    [--interval-s 60] [--warmup-s SECONDS] [--nemesis-every-s 180]

Writes DIR/net (the nodes' homes and logs), DIR/commands.jsonl (every command, one line each),
DIR/load.log (the load's own libp2p log), DIR/soak.json and DIR/soak.png; prints the summary as
one JSON line; exits 0 when the run passed, 1 when it did not, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from healthnode.errors import HealthnodeError
from healthnode.tools.soak.plan import NEMESIS_EVERY_S_DEFAULT


def _at_least(minimum: float, kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be at least {minimum:g}")
        return value
    return parse


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="healthnode soak",
        description="run a real local network for a stated time under a mixed load (wallets, "
                    "hang-ups, hostile admin requests, link cuts and pauses) and record how "
                    "each node's resources evolve (docs/reliability.md)")
    parser.add_argument("--nodes", type=_at_least(2, int), default=4,
                        help="authorities (4; at least 2: a link cut needs two ends)")
    parser.add_argument("--duration", type=_at_least(1, float), required=True,
                        metavar="SECONDS", help="how long the load runs")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="a new directory for the network, soak.json and soak.png")
    parser.add_argument("--seed", type=int, default=None,
                        help="seeds the schedule of faults, hostile requests and hang-ups")
    parser.add_argument("--wallets-at-once", type=_at_least(1, int), default=10, metavar="K",
                        help="wallet commands of one burst (10)")
    parser.add_argument("--interval-s", type=_at_least(1, float), default=60.0,
                        help="seconds between two samples (60)")
    parser.add_argument("--warmup-s", type=_at_least(0, float), default=None,
                        help="the warm-up, declared before the run: growth is measured from the "
                             "first sample after it (default: 10 %% of the run, at least two "
                             "samples)")
    parser.add_argument("--nemesis-every-s", type=_at_least(1, float),
                        default=NEMESIS_EVERY_S_DEFAULT,
                        help=f"mean seconds between two faults ({NEMESIS_EVERY_S_DEFAULT:g})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse(sys.argv[1:] if argv is None else argv)
    from healthnode.tools.soak.actors import SoakOptions  # noqa: PLC0415 (imports libp2p)
    from healthnode.tools.soak.runner import run_soak  # noqa: PLC0415 (imports libp2p)

    options = SoakOptions(
        nodes=int(arguments.nodes), duration_s=float(arguments.duration),
        out=arguments.out.resolve(),
        seed=arguments.seed if arguments.seed is not None else int(time.time()),
        wallets_at_once=int(arguments.wallets_at_once), interval_s=float(arguments.interval_s),
        warmup_s=float(arguments.warmup_s) if arguments.warmup_s is not None else None,
        nemesis_every_s=float(arguments.nemesis_every_s))

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        summary = run_soak(options, log)
    except HealthnodeError as error:
        print(f"healthnode soak: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
