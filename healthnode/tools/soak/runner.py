"""The soak's entry (`run_soak`): the output directory, the network up and down, the signals,
and the files it writes.

Theory of operation. `run_soak` writes a testnet into OUT/net (free ports, metrics on), starts
one `healthnode run` process per node (`Nodes`, nodes.py), and runs `Soak.main` (actors.py)
under trio: it waits until every node answers `status`, then runs every actor of the load in one
nursery. The run ends after --duration, or at SIGINT/SIGTERM: the nursery is cancelled (a paused
node is resumed on the way out), one last sample is taken, the nodes are stopped, and
OUT/soak.json and OUT/soak.png are written with whatever was gathered. soak.json is also
rewritten after every sample, so a soak that is itself killed leaves its figures up to the last
minute.
"""

from __future__ import annotations

import datetime
import signal
import sys
from collections.abc import Callable
from typing import Any

import trio

from healthnode import __version__, logs
from healthnode.tools.soak import plan
from healthnode.tools.soak.actors import Soak, SoakOptions, write_json_atomically
from healthnode.tools.soak.load import COMMAND_TIMEOUT_S, PATIENTS
from healthnode.tools.soak.nodes import Nodes, SoakError
from healthnode.tools.soak.plot import write_plot
from healthnode.tools.soak.record import FAULT_GRACE_S, SoakRecord, warmup_s


def soak_config(options: SoakOptions, nodes: Nodes) -> dict[str, Any]:
    return {
        "nodes": options.nodes, "duration_s": options.duration_s,
        "interval_s": options.interval_s, "seed": options.seed,
        "wallets_at_once": options.wallets_at_once,
        "nemesis_every_s": options.nemesis_every_s,
        "warmup_s": warmup_s(options.duration_s, options.interval_s, options.warmup_s),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "healthnode": __version__, "python": sys.version.split()[0],
        "base_port": nodes.base_port, "homes": [str(home) for home in nodes.homes],
        "metrics": nodes.metrics_urls,
        "load": {"row_pause_s": plan.ROW_PAUSE_S, "patients": PATIENTS,
                 "write_every": plan.WRITE_EVERY, "burst_every_s": plan.BURST_EVERY_S,
                 "hangup_every_s": plan.HANGUP_EVERY_S, "admin_every_s": plan.ADMIN_EVERY_S,
                 "hostile_every_s": plan.HOSTILE_EVERY_S, "pause_s": plan.PAUSE_S,
                 "fault_grace_s": FAULT_GRACE_S, "command_timeout_s": COMMAND_TIMEOUT_S},
    }


def run_soak(options: SoakOptions, log: Callable[[str], None]) -> dict[str, Any]:
    """The whole soak; returns its summary (`summary["passed"]` decides the exit status)."""
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    if (out / "soak.json").exists() or (out / "net").exists():
        raise SoakError(f"{out} already holds a soak; choose another --out")
    # The soak's own wallets run libp2p in this process: its chatter goes to a file, not to us.
    with (out / "load.log").open("a", encoding="utf-8") as load_log:
        logs.configure_logging("warning", "json", load_log)
        nodes = Nodes(out / "net", options.nodes)
        record = SoakRecord(config=soak_config(options, nodes), node_count=options.nodes)
        soak = Soak(options, nodes, record, log)
        log(f"soak: {options.nodes} nodes in {out / 'net'} (base port {nodes.base_port}), "
            f"seed {options.seed}, {options.duration_s:.0f} s, a sample every "
            f"{options.interval_s:.0f} s")
        # SIGTERM unwinds like Ctrl-C until trio takes both signals over for the load.
        previous_term = signal.signal(signal.SIGTERM, lambda _number, _frame: sys.exit(143))
        try:
            for node in range(nodes.count):
                nodes.start(node)
            trio.run(soak.main)
        except SoakError as error:
            record.error = str(error)
            log(f"soak: {error}")
        except (KeyboardInterrupt, SystemExit):
            record.interrupted = True
            log("soak: interrupted; stopping the nodes and writing what was gathered")
        finally:
            if record.ended_s is None:
                record.ended_s = soak.now()
            nodes.stop_all()
            soak.close()
            signal.signal(signal.SIGTERM, previous_term)
            record.give_up_retries()
            document = record.to_json()
            document["plot"] = write_plot(document, out / "soak.png")
            write_json_atomically(out / "soak.json", document)
            logs.configure_logging("warning", "json", sys.stderr)  # load.log is closed below
    summary: dict[str, Any] = document["summary"]
    return summary
