"""`python -m healthnode.tools.nemesis run ...`: a fault-injection run (docs/reliability.md).

    python -m healthnode.tools.nemesis run --backend namespaces --duration 600 --out DIR
    python -m healthnode.tools.nemesis run --backend compose --project healthnode \
        --duration 600 --out DIR

Writes DIR/history.jsonl (one event per line) and DIR/report.json, prints the report, and exits 0
when the checker found nothing (no lost or duplicated acknowledged record, no fork), 1 otherwise.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from healthnode.tools.nemesis.backends import Backend, ComposeBackend, NamespaceBackend
from healthnode.tools.nemesis.faults import FAULT_KINDS
from healthnode.tools.nemesis.runner import Run, RunOptions, report_json


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="healthnode nemesis",
                                     description="fault injection against a real network")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run clients and faults, then check the history")
    run.add_argument("--backend", choices=("namespaces", "compose"), default="namespaces")
    run.add_argument("--duration", type=float, default=600.0, help="seconds of faults (600)")
    run.add_argument("--out", type=Path, default=None,
                     help="directory for history.jsonl, report.json (and node homes)")
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--clients", type=int, default=4)
    run.add_argument("--faults", default=",".join(FAULT_KINDS),
                     help=f"comma-separated kinds among {','.join(FAULT_KINDS)}")
    run.add_argument("--nodes", type=int, default=4, help="namespaces backend: node count")
    run.add_argument("--project", default="healthnode", help="compose backend: project name")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse(sys.argv[1:] if argv is None else argv)
    kinds = tuple(kind for kind in arguments.faults.split(",") if kind)
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown or not kinds:
        print(f"nemesis: unknown fault kinds {unknown}; choose among {FAULT_KINDS}",
              file=sys.stderr)
        return 2
    out: Path = arguments.out or Path(tempfile.mkdtemp(prefix="healthnode-nemesis-"))
    out.mkdir(parents=True, exist_ok=True)
    history = out / "history.jsonl"
    if history.exists():
        print(f"nemesis: {history} exists; choose another --out", file=sys.stderr)
        return 2
    seed = arguments.seed if arguments.seed is not None else int(time.time())
    options = RunOptions(duration_s=arguments.duration, history=history, seed=seed,
                         clients=arguments.clients, kinds=kinds)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    log(f"nemesis: backend {arguments.backend}, seed {seed}, out {out}")
    # SIGTERM unwinds like Ctrl-C, so the finally below removes namespaces and stops nodes.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(143))
    backend: Backend
    if arguments.backend == "namespaces":
        backend = NamespaceBackend(out / "net", node_count=arguments.nodes)
    else:
        backend = ComposeBackend(project=arguments.project)
    try:
        report = Run(backend, options, log=log).execute()
    finally:
        backend.close()
    text = report_json(report, options, arguments.backend)
    (out / "report.json").write_text(text + "\n")
    print(text)
    return 0 if report.valid else 1


if __name__ == "__main__":
    sys.exit(main())
