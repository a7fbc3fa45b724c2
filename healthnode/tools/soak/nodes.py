"""The soak's node processes (`Nodes`): a testnet with metrics on, one `healthnode run`
process per node, started, paused, resumed and stopped; and what the soak reads of a node from
outside: its RSS and open file descriptors from /proc, and its links in an admin `peers` answer."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path
from typing import Any, Final

from healthnode.errors import HealthnodeError
from healthnode.home.config import load_config, write_config
from healthnode.home.layout import free_base_port, make_testnet
from healthnode.tools.launcher import NodeProcess, stop_all
from healthnode.tools.soak.record import parse_vm_rss_kib
from healthnode.wallet.connection import resolve_node

STOP_GRACE_S: Final = 10.0
LOG_TAIL_CHARS: Final = 2_000


class SoakError(HealthnodeError):
    """The soak could not run (the network did not start)."""


def tcp_endpoint(address: str) -> tuple[str, int]:
    """(host, port) of an `/ip4/H/tcp/P` listen multiaddr (0.0.0.0 reached on 127.0.0.1)."""
    parts = address.split("/")
    assert len(parts) >= 5 and parts[1] == "ip4" and parts[3] == "tcp", address
    host = "127.0.0.1" if parts[2] == "0.0.0.0" else parts[2]  # noqa: S104 (an address we read)
    return host, int(parts[4])


def proc_figures(pid: int) -> tuple[int | None, int | None, int | None]:
    """(RSS in KiB, of which anonymous, open file descriptors) of a process, from /proc; None
    where unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kib, rss_anon_kib = parse_vm_rss_kib(status), parse_vm_rss_kib(status, "RssAnon")
    except OSError:
        rss_kib = rss_anon_kib = None
    try:
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    return rss_kib, rss_anon_kib, fds


def link_up(peers: Any, public_key_hex: str, ups_after: int = -1) -> bool:
    """Whether an admin `peers` answer shows the link to `public_key_hex` connected, and (when
    `ups_after` is given) come up again since it had come up `ups_after` times."""
    if not isinstance(peers, list):
        return False
    return any(isinstance(link, dict) and link.get("public_key") == public_key_hex
               and link.get("connected") is True and link_ups(peers, public_key_hex) > ups_after
               for link in peers)


def link_ups(peers: Any, public_key_hex: str) -> int:
    """How many times the link to `public_key_hex` came up (admin `peers`' `link_ups`)."""
    if isinstance(peers, list):
        for link in peers:
            if isinstance(link, dict) and link.get("public_key") == public_key_hex:
                ups = link.get("link_ups")
                return ups if isinstance(ups, int) else -1
    return -1


class Nodes:
    """The network's node processes: a testnet in `net`, one `healthnode run` per node."""

    def __init__(self, net: Path, count: int) -> None:
        self.base_port = free_base_port(count)
        self.genesis, homes = make_testnet(count, net, self.base_port)
        self.homes = [home.path.resolve() for home in homes]
        self.public_keys = [home.public_key for home in homes]
        self.admin_sockets: list[Path] = []
        self.metrics_urls: list[str] = []
        self.p2p_endpoints: list[tuple[str, int]] = []
        for home in self.homes:
            node_config = load_config(home)
            if not node_config.metrics.enabled:
                node_config = dataclasses.replace(
                    node_config, metrics=dataclasses.replace(node_config.metrics, enabled=True))
                write_config(node_config, home)
            self.admin_sockets.append(home / node_config.admin.socket)
            self.metrics_urls.append(f"http://{node_config.metrics.listen}/metrics")
            self.p2p_endpoints.append(tcp_endpoint(node_config.p2p.listen[0]))
        self.wallet_addresses = [resolve_node(str(home)) for home in self.homes]
        self.launched = [NodeProcess(home, new_session=True) for home in self.homes]
        self.paused: set[int] = set()

    @property
    def processes(self) -> list[subprocess.Popen[bytes] | None]:
        """Each node's current process (a restart makes a new one), None before its first."""
        return [node.process for node in self.launched]

    @property
    def count(self) -> int:
        return len(self.homes)

    def start(self, index: int) -> None:
        self.launched[index].start()

    def alive(self, index: int) -> bool:
        return self.launched[index].running

    def pid(self, index: int) -> int | None:
        return self.launched[index].pid

    def pause(self, index: int) -> None:
        if self.launched[index].running:
            self.paused.add(index)
            self.launched[index].pause()

    def resume(self, index: int) -> None:
        self.paused.discard(index)
        self.launched[index].resume()

    def log_tail(self, index: int) -> str:
        return self.launched[index].log_tail(LOG_TAIL_CHARS)

    def stop_all(self) -> None:
        """SIGCONT (a paused node cannot act on SIGTERM), SIGTERM, and SIGKILL after a grace."""
        stop_all(self.launched, STOP_GRACE_S)
        self.paused.clear()
