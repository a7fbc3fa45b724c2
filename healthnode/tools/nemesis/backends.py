"""Where the faults happen. Two backends, one interface (`Backend`):

- `NamespaceBackend`: local `healthnode run` processes, each in its own network namespace on a
  shared bridge (root). Kill, stop, pause are signals to the process; isolate and partition are
  nftables rules inside the nodes' namespaces that drop packets to and from the other side (links
  die silently, as in a real network partition). The admin sockets are files in the homes, so
  the client talks to every node directly from the host.
- `ComposeBackend`: the compose network of scripts/cluster (podman or docker, as root). Kill,
  stop, start, pause are the engine's; isolate is `network disconnect` / `network connect`;
  a partition is nftables rules entered into the containers' network namespaces (nsenter). The
  client talks to the admin sockets through the node volumes' host paths.

Every command the backends run is bounded by `COMMAND_TIMEOUT_S`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Final, Protocol

import healthnode
from healthnode import crypto
from healthnode.admin.client import call
from healthnode.home.config import load_config, load_genesis, write_config
from healthnode.home.layout import make_testnet
from healthnode.tools.launcher import NodeProcess, stop_all

STOP_GRACE_S: Final = 30.0  # a node that has not stopped by then is killed
COMMAND_TIMEOUT_S: Final = 60.0  # podman start/stop of a node takes a few seconds
NFT_TABLE: Final = "healthnode_nemesis"
ADMIN_TIMEOUT_S: Final = 5.0  # a paused node must not hold a client for long


class Backend(Protocol):
    node_count: int
    chain_id: str

    def admin(self, index: int, method: str, params: dict[str, Any],
              timeout_s: float = ADMIN_TIMEOUT_S) -> Any: ...
    def running(self, index: int) -> bool: ...
    def kill(self, index: int) -> None: ...
    def stop(self, index: int) -> None: ...
    def start(self, index: int) -> None: ...
    def pause(self, index: int) -> None: ...
    def unpause(self, index: int) -> None: ...
    def isolate(self, index: int) -> None: ...
    def reconnect(self, index: int) -> None: ...
    def partition(self, groups: list[list[int]]) -> None: ...
    def heal_partition(self) -> None: ...
    def close(self) -> None: ...


def run(*command: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(command, input=stdin, text=True, capture_output=True,
                            timeout=COMMAND_TIMEOUT_S, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: exit {result.returncode}: "
                           f"{result.stderr.strip()[-500:]}")
    return result.stdout


def partition_rules(blocked: list[str]) -> str:
    """An nftables table that drops IPv4 traffic to and from the addresses in `blocked`."""
    addresses = ", ".join(blocked)
    return (f"table inet {NFT_TABLE} {{\n"
            f" chain input {{ type filter hook input priority 0; policy accept;"
            f" ip saddr {{ {addresses} }} drop; }}\n"
            f" chain output {{ type filter hook output priority 0; policy accept;"
            f" ip daddr {{ {addresses} }} drop; }}\n"
            f"}}\n")


def _blocked_for(index: int, groups: list[list[int]], addresses: list[str]) -> list[str]:
    side = next(group for group in groups if index in group)
    return [addresses[j] for j in range(len(addresses)) if j not in side]


def need_root_tools(*tools: tuple[str, str]) -> None:
    """Install the Debian packages for missing tools (as root), or stop with the reason."""
    if os.geteuid() != 0:
        raise SystemExit("the nemesis needs root (network namespaces, nftables, podman)")
    for tool, package in tools:
        if shutil.which(tool) is None:
            subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False,
                           capture_output=True, timeout=600,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if shutil.which(tool) is None:
            raise SystemExit(f"`{tool}` is missing and apt-get install {package} failed")


def build_bridged_namespaces(hub: str, prefix: str, namespaces: list[str],
                             addresses: list[str]) -> None:
    """One network namespace per node, each with a veth to a bridge in namespace `hub` and the
    address of the same index (/24). Interface names start with `prefix` (kept short: 15 chars)."""
    run("ip", "netns", "add", hub)
    run("ip", "netns", "exec", hub, "ip", "link", "add", "br0", "type", "bridge")
    run("ip", "netns", "exec", hub, "ip", "link", "set", "br0", "up")
    for index, namespace in enumerate(namespaces):
        inside, outside = f"{prefix}v{index}", f"{prefix}p{index}"
        run("ip", "netns", "add", namespace)
        run("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
        run("ip", "link", "set", inside, "netns", namespace)
        run("ip", "link", "set", outside, "netns", hub)
        run("ip", "netns", "exec", hub, "ip", "link", "set", outside, "master", "br0")
        run("ip", "netns", "exec", hub, "ip", "link", "set", outside, "up")
        run("ip", "netns", "exec", namespace, "ip", "addr", "add", f"{addresses[index]}/24",
            "dev", inside)
        run("ip", "netns", "exec", namespace, "ip", "link", "set", inside, "up")
        run("ip", "netns", "exec", namespace, "ip", "link", "set", "lo", "up")


class NamespaceBackend:
    """N local nodes in network namespaces `<prefix>n<i>` behind a bridge in `<prefix>h`."""

    def __init__(self, root: Path, node_count: int = 4, base_port: int = 27600,
                 subnet_tag: int | None = None) -> None:
        need_root_tools(("ip", "iproute2"), ("nft", "nftables"))
        self.node_count = node_count
        self.root = root
        tag = subnet_tag if subnet_tag is not None else os.getpid() % 200 + 20
        self.addresses = [f"10.78.{tag}.{i + 1}" for i in range(node_count)]
        self.prefix = f"hnm{os.getpid() % 100000}"
        self.namespaces = [f"{self.prefix}n{i}" for i in range(node_count)]
        self.hub = f"{self.prefix}h"
        # The nodes run a snapshot of the source taken now: a run must not pick up half-made
        # edits of the working tree when it restarts a node ten minutes later.
        self.code = root / "code"
        shutil.copytree(Path(healthnode.__file__).parent, self.code / "healthnode",
                        ignore=shutil.ignore_patterns("__pycache__"))
        genesis, homes = make_testnet(node_count, root, base_port)
        self.chain_id = genesis.chain_id
        self.homes = [home.path for home in homes]
        self.nodes = [NodeProcess(home.resolve(), prefix=("ip", "netns", "exec", namespace),
                                  cwd=self.code)
                      for home, namespace in zip(self.homes, self.namespaces, strict=True)]
        self._build_network()
        for index, home in enumerate(self.homes):
            node_config = load_config(home)
            peers = tuple(f"/ip4/{self.addresses[j]}/tcp/{base_port}/p2p/"
                          f"{crypto.peer_id(homes[j].public_key)}"
                          for j in range(node_count) if j != index)
            p2p = dataclasses.replace(node_config.p2p, peers=peers,
                                      listen=(f"/ip4/{self.addresses[index]}/tcp/{base_port}",))
            metrics = dataclasses.replace(node_config.metrics, enabled=False)
            write_config(dataclasses.replace(node_config, p2p=p2p, metrics=metrics), home)
        for index in range(node_count):
            self.start(index)

    def _build_network(self) -> None:
        build_bridged_namespaces(self.hub, self.prefix, self.namespaces, self.addresses)

    def admin(self, index: int, method: str, params: dict[str, Any],
              timeout_s: float = ADMIN_TIMEOUT_S) -> Any:
        return call(self.homes[index] / "admin.sock", method, params, timeout_s=timeout_s)

    def start(self, index: int) -> None:
        if not self.nodes[index].running:
            self.nodes[index].start()

    def running(self, index: int) -> bool:
        return self.nodes[index].running

    def kill(self, index: int) -> None:
        self.nodes[index].kill()

    def stop(self, index: int) -> None:
        self.nodes[index].stop(STOP_GRACE_S)

    def pause(self, index: int) -> None:
        self.nodes[index].pause()

    def unpause(self, index: int) -> None:
        self.nodes[index].resume()

    def isolate(self, index: int) -> None:
        others = [i for i in range(self.node_count) if i != index]
        self.partition([[index], others])

    def reconnect(self, index: int) -> None:
        self.heal_partition()

    def partition(self, groups: list[list[int]]) -> None:
        for index, namespace in enumerate(self.namespaces):
            blocked = _blocked_for(index, groups, self.addresses)
            if blocked:
                run("ip", "netns", "exec", namespace, "nft", "-f", "-",
                    stdin=partition_rules(blocked))

    def heal_partition(self) -> None:
        for namespace in self.namespaces:
            run("ip", "netns", "exec", namespace, "nft", "delete", "table", "inet", NFT_TABLE,
                check=False)

    def close(self) -> None:
        stop_all(self.nodes, STOP_GRACE_S)
        for namespace in [*self.namespaces, self.hub]:
            run("ip", "netns", "del", namespace, check=False)


class ComposeBackend:
    """The compose network that `scripts/cluster up` started (project `project`)."""

    def __init__(self, project: str = "healthnode", engine: str | None = None,
                 node_count: int = 4) -> None:
        need_root_tools(("nsenter", "util-linux"), ("nft", "nftables"))
        self.engine = engine or ("docker" if _docker_answers() else "podman")
        self.project = project
        self.node_count = node_count
        self.network = f"{project}_healthnode"
        self.services = [f"node{i}" for i in range(node_count)]
        self.containers = [self._container(service) for service in self.services]
        self.sockets = [Path(self._engine("volume", "inspect", "-f", "{{.Mountpoint}}",
                                          f"{project}_{service}").strip()) / "admin.sock"
                        for service in self.services]
        self.chain_id = load_genesis(self.sockets[0].parent / "genesis.json").chain_id
        self._partitioned: set[int] = set()

    def _engine(self, *arguments: str, check: bool = True) -> str:
        return run(self.engine, *arguments, check=check)

    def _container(self, service: str) -> str:
        names = self._engine("ps", "-a", "--filter",
                             f"label=com.docker.compose.project={self.project}", "--filter",
                             f"label=com.docker.compose.service={service}",
                             "--format", "{{.Names}}").split()
        if not names:
            raise SystemExit(f"no container for {service} of project {self.project}: "
                             f"run scripts/cluster up first")
        return names[0]

    def admin(self, index: int, method: str, params: dict[str, Any],
              timeout_s: float = ADMIN_TIMEOUT_S) -> Any:
        return call(self.sockets[index], method, params, timeout_s=timeout_s)

    def running(self, index: int) -> bool:
        state = self._engine("inspect", "-f", "{{.State.Status}}", self.containers[index],
                             check=False)
        return state.strip() in ("running", "paused")

    def kill(self, index: int) -> None:
        self._engine("kill", self.containers[index], check=False)

    def stop(self, index: int) -> None:
        self._engine("stop", "-t", "20", self.containers[index], check=False)

    def start(self, index: int) -> None:
        state = self._engine("inspect", "-f", "{{.State.Status}}", self.containers[index])
        if state.strip() == "paused":
            self.unpause(index)
        elif state.strip() != "running":
            self._engine("start", self.containers[index])

    def pause(self, index: int) -> None:
        self._engine("pause", self.containers[index])

    def unpause(self, index: int) -> None:
        self._engine("unpause", self.containers[index], check=False)

    def isolate(self, index: int) -> None:
        self._engine("network", "disconnect", self.network, self.containers[index])

    def reconnect(self, index: int) -> None:
        """Back on the network with the address the node listens on (scripts/cluster does the
        same), so the node's own listener and the others' address books stay valid."""
        if self._connected(index):
            return
        listen = load_config(self.sockets[index].parent).p2p.listen[0]
        address = listen.split("/")[2]
        arguments = ["network", "connect", "--alias", self.services[index]]
        if not ipaddress.ip_address(address).is_unspecified:
            arguments += ["--ip", address]
        self._engine(*arguments, self.network, self.containers[index], check=False)

    def _connected(self, index: int) -> bool:
        document = json.loads(self._engine("inspect", self.containers[index]))[0]
        return self.network in (document["NetworkSettings"].get("Networks") or {})

    def _addresses(self) -> list[str]:
        addresses = []
        for container in self.containers:
            document = json.loads(self._engine("inspect", container))[0]
            networks = document["NetworkSettings"].get("Networks") or {}  # none: disconnected
            addresses.append(str(networks.get(self.network, {}).get("IPAddress", "")))
        return addresses

    def partition(self, groups: list[list[int]]) -> None:
        addresses = self._addresses()
        for index, container in enumerate(self.containers):
            blocked = [a for a in _blocked_for(index, groups, addresses) if a]
            if not blocked:
                continue
            pid = self._engine("inspect", "-f", "{{.State.Pid}}", container).strip()
            if pid in ("", "0"):
                continue  # not running: nothing to cut
            run("nsenter", "-t", pid, "-n", "nft", "-f", "-", stdin=partition_rules(blocked))
            self._partitioned.add(index)

    def heal_partition(self) -> None:
        for index in sorted(self._partitioned):
            pid = self._engine("inspect", "-f", "{{.State.Pid}}", self.containers[index]).strip()
            if pid not in ("", "0"):
                run("nsenter", "-t", pid, "-n", "nft", "delete", "table", "inet", NFT_TABLE,
                    check=False)
        self._partitioned.clear()

    def close(self) -> None:
        self.heal_partition()
        for index in range(self.node_count):
            self.reconnect(index)
            self.start(index)


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10,
                              check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def wait_until(condition: Any, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return bool(condition())
