"""`healthnode localnet`: a whole network on this machine, one `healthnode run` process per node.

It writes a testnet into the directory unless one is there (so a second run resumes the same
chain), starts every node as a child process with its log in its home, waits until every node
answers `status` on its admin socket, prints one JSON line with `"ready": true` and the node
homes, and stops all nodes on Ctrl-C or SIGTERM (SIGTERM to each, SIGKILL after a grace period).
If a node exits on its own, localnet reports it and stops the others: a half network is not what
the user asked for. With `--demo`, once the network is ready it walks through a patient's
story with the wallet (healthnode/tools/demo.py), then keeps running.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Final

from healthnode.errors import HealthnodeError
from healthnode.home import layout as homes
from healthnode.home.config import CONFIG_FILE, GENESIS_FILE, load_config
from healthnode.tools.launcher import NodeProcess, stop_all

READY_TIMEOUT_S: Final = 60
STOP_GRACE_S: Final = 10
POLL_INTERVAL_S: Final = 0.2


class LocalnetError(HealthnodeError):
    pass


def node_homes(directory: Path) -> list[Path]:
    found = [d for d in directory.iterdir() if d.is_dir() and (d / CONFIG_FILE).exists()]
    return sorted(found, key=lambda d: (len(d.name), d.name))


def prepare(directory: Path, nodes: int, base_port: int) -> list[Path]:
    if not (directory / GENESIS_FILE).exists():
        directory.mkdir(parents=True, exist_ok=True)
        homes.make_testnet(nodes, directory, base_port)
        print(f"localnet: wrote a new {nodes}-node testnet to {directory}", file=sys.stderr)
    found = node_homes(directory)
    if len(found) != nodes:
        raise LocalnetError(f"{directory} holds a {len(found)}-node network, not {nodes}; "
                            f"use --nodes {len(found)} or another --dir")
    return found


def run_localnet(directory: Path, nodes: int, base_port: int, demo: bool = False) -> int:
    directory = directory.resolve()
    node_dirs = prepare(directory, nodes, base_port)
    stop_requested: list[int] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop_requested.append(signum)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    children = [NodeProcess(node_dir, new_session=True) for node_dir in node_dirs]
    try:
        for child in children:
            child.start()
        for node_dir in node_dirs:
            config = load_config(node_dir)
            print(f"localnet: {node_dir.name}: log {node_dir / 'node.log'}, admin "
                  f"{node_dir / config.admin.socket}, metrics http://{config.metrics.listen}"
                  "/metrics", file=sys.stderr)
        if not _wait_ready(node_dirs, children, stop_requested):
            return 1 if not stop_requested else 0
        print(json.dumps({"ready": True, "directory": str(directory),
                          "nodes": [str(d) for d in node_dirs]}), flush=True)
        if demo:
            from healthnode.tools.demo import run_demo  # noqa: PLC0415 (imports libp2p)

            run_demo(node_dirs, lambda line: print(line, flush=True))
        while not stop_requested:
            for node_dir, child in zip(node_dirs, children, strict=True):
                if child.exited:
                    code = child.process.returncode if child.process else None
                    print(f"localnet: {node_dir.name} exited with {code}; "
                          f"see {node_dir / 'node.log'}; stopping the network", file=sys.stderr)
                    return 1
            time.sleep(POLL_INTERVAL_S)
        print("localnet: stopping", file=sys.stderr)
        return 0
    finally:
        stop_all(children, STOP_GRACE_S)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_ready(node_dirs: list[Path], children: list[NodeProcess],
                stop_requested: list[int]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = set(range(len(node_dirs)))
    while waiting and not stop_requested:
        for index in sorted(waiting):
            node_dir = node_dirs[index]
            if children[index].exited:
                print(f"localnet: {node_dir.name} failed to start:\n"
                      f"{children[index].log_tail(400)}", file=sys.stderr)
                return False
            if children[index].answers():
                waiting.discard(index)
        if time.monotonic() > deadline:
            print(f"localnet: nodes not ready after {READY_TIMEOUT_S} s", file=sys.stderr)
            return False
        time.sleep(POLL_INTERVAL_S)
    return not waiting
