"""`healthnode run` and `healthnode localnet` as processes: clean stops, a second instance on
the same home refused, localnet's ready line and its resume of the same chain."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from healthnode.home.layout import make_testnet
from tests.cluster import Cluster, free_base_port, wait_for


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_node_stops_cleanly_on_sigterm_and_ctrl_c(tmp_path: Path, stop_signal: int) -> None:
    cluster = Cluster(tmp_path / "net", nodes=1)
    try:
        cluster.start_all()
        cluster.wait_height(1, [0], timeout_s=20)
        assert cluster.kill(0, stop_signal) == 0
    finally:
        cluster.close()
    log = cluster.log_tail(0, 100_000)
    assert "Traceback" not in log and '"node_stopped"' in log
    assert not (cluster.homes[0] / "admin.sock").exists()


def test_a_second_instance_on_the_same_home_is_refused(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "net", nodes=1)
    try:
        cluster.start_all()
        second = subprocess.run(
            [sys.executable, "-m", "healthnode", "run", "--home", str(cluster.homes[0])],
            capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 1
        assert "in use by another process" in second.stderr
        assert "Traceback" not in second.stderr
        assert cluster.status(0)["node"] == "node0"  # the first one is unharmed
    finally:
        cluster.close()


def read_ready_line(process: subprocess.Popen[str], timeout_s: float) -> dict[str, object]:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.strip():
            document: dict[str, object] = json.loads(line)
            return document
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
    raise AssertionError("localnet printed no ready line")


def test_localnet_reports_ready_stops_on_sigterm_and_resumes_the_same_chain(
        tmp_path: Path) -> None:
    directory = tmp_path / "localnet"
    command = [sys.executable, "-m", "healthnode", "localnet", "--nodes", "4", "--dir",
               str(directory), "--base-port", str(free_base_port(4))]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready = read_ready_line(first, 60)
        assert ready["ready"] is True
        assert ready["nodes"] == [str(directory / f"node{i}") for i in range(4)]
        from healthnode.admin.client import call
        socket = directory / "node0" / "admin.sock"
        wait_for(lambda: call(socket, "status")["height"] >= 1, 20, "a first block")
        reached = call(socket, "status")["height"]
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert not socket.exists()
    again = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        read_ready_line(again, 60)
        assert call(socket, "status")["height"] >= reached  # the same chain, resumed
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=30) == 0
    finally:
        if again.poll() is None:
            again.kill()


def test_localnet_refuses_a_directory_of_another_size(tmp_path: Path) -> None:
    make_testnet(3, tmp_path / "three", free_base_port(3))
    result = subprocess.run(
        [sys.executable, "-m", "healthnode", "localnet", "--nodes", "4", "--dir",
         str(tmp_path / "three")], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "3-node network, not 4" in result.stderr


def test_localnet_demo_walks_through_a_patients_story(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "healthnode", "localnet", "--dir", str(tmp_path / "demo"),
               "--base-port", str(free_base_port(4)), "--demo"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    lines: list[str] = []
    try:
        read_ready_line(process, 60)
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not lines or lines[-1] != "demo: done"):
            line = process.stdout.readline()
            assert line, f"localnet ended before the demo finished: {lines}"
            lines.append(line.rstrip("\n"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    story = "\n".join(lines)
    for step in ["registers dr-ada", "registers dr-ben", "encrypts a FHIR lab result",
                 "without a grant: refused (record_not_readable)", "grants dr-ben",
                 "potassium 4.1 mmol/L", "revokes the grant",
                 "reads it again: refused (record_not_readable)",
                 "not allowed for emergencies): refused (record_not_readable)",
                 "penicillin allergy, read with decryption shares of hospitals [1, 2, 3]",
                 "audit trail (4 lines)", "BREAK-GLASS record", "demo: done"]:
        assert step in story, f"missing step {step!r} in:\n{story}"


def test_a_node_whose_p2p_port_is_taken_refuses_to_start(tmp_path: Path) -> None:
    """libp2p alone logs the failed listener and runs on; the node must not look started."""
    import socket
    base = free_base_port(1)
    make_testnet(1, tmp_path, base)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base))
        taken.listen()
        started = subprocess.run(
            [sys.executable, "-m", "healthnode", "run", "--home", str(tmp_path / "node0")],
            capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode == 1
    assert "[p2p].listen" in started.stderr and "cannot listen" in started.stderr
    assert "Traceback" not in started.stderr
