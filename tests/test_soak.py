"""`healthnode soak`: its pure parts (fault schedule, command mix, classification of failures,
interval figures, growth, verdict, plot series) on made-up facts, and two real runs of a 4-node
network: a short soak that writes its figures, and a soak stopped by SIGTERM that still stops
its nodes and writes what it gathered."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from healthnode.admin.rpc import LINE_BYTES_MAX
from healthnode.tools.soak import plan
from healthnode.tools.soak.plot import plot_series
from healthnode.tools.soak.record import (
    CRASH_LOOKBACK_S,
    FAULT_GRACE_S,
    RETRY_ATTEMPTS_MAX,
    CommandResult,
    SoakRecord,
    growth_pct,
    judge_answer,
    node_sample,
    parse_vm_rss_kib,
    percentile,
    stop_signal_in_log,
    wallet_stats,
    warmup_s,
)

REPO = Path(__file__).resolve().parent.parent


def soak_record(nodes: int = 4, duration_s: float = 100.0, interval_s: float = 10.0) -> SoakRecord:
    return SoakRecord(config={"duration_s": duration_s, "interval_s": interval_s, "seed": 1},
                      node_count=nodes)


def wallet(node: int, started_s: float, ended_s: float, error: str | None = None,
           kind: str = "nonce") -> CommandResult:
    return CommandResult("wallet", "row", kind, node, started_s, ended_s, error)


def sample(node: int, rss_kib: int | None = 100_000, fds: int | None = 20,
           tasks: int | None = 60) -> dict[str, Any]:
    connections = {"by_kind": {"authority": 3, "wallet": 1}, "trio_tasks": tasks} \
        if tasks is not None else None
    return node_sample(node, alive=True, paused=False, rss_kib=rss_kib, fds=fds, status=None,
                       connections=connections)


# --- the plan ------------------------------------------------------------------------------

def test_the_fault_schedule_replays_from_its_seed() -> None:
    def schedule(seed: int) -> list[tuple[float, Any]]:
        rng = random.Random(seed)
        return [(plan.fault_gap_s(rng, 180), plan.next_soak_fault(rng, 4)) for _ in range(50)]

    assert schedule(7) == schedule(7)
    assert schedule(7) != schedule(8)


def test_faults_are_a_link_cut_between_two_nodes_or_a_pause_of_10_to_30_s() -> None:
    rng = random.Random(1)
    faults = [plan.next_soak_fault(rng, 4) for _ in range(500)]
    assert {fault.kind for fault in faults} == {"link_cut", "pause"}
    for fault in faults:
        assert all(0 <= node < 4 for node in fault.nodes)
        if fault.kind == "link_cut":
            cutting, peer = fault.nodes
            assert cutting != peer
        else:
            assert len(fault.nodes) == 1
            assert plan.PAUSE_S[0] <= fault.duration_s <= plan.PAUSE_S[1]


def test_fault_gaps_stay_within_half_and_one_and_a_half_times_the_mean() -> None:
    rng = random.Random(2)
    gaps = [plan.fault_gap_s(rng, 120) for _ in range(1000)]
    assert min(gaps) >= 60 and max(gaps) <= 180


def test_the_row_writes_every_tenth_command_and_every_node_gets_writes() -> None:
    kinds = [plan.row_command_kind(number, has_record=True) for number in range(100)]
    assert kinds.count("record_add") == 10 and kinds.count("record_get") == 10
    writes_to = {plan.row_node(number, 4) for number in range(0, 400, plan.WRITE_EVERY)}
    assert writes_to == {0, 1, 2, 3}
    assert plan.row_command_kind(plan.READ_BACK_OFFSET, has_record=False) in plan.ROW_READS


def test_every_hostile_case_is_one_line_within_the_admin_limit_but_the_half_line() -> None:
    for case in plan.HOSTILE_CASES:
        assert len(case.line) <= LINE_BYTES_MAX, case.name
        assert case.line.count(b"\n") == (0 if case.hold else 1), case.name
        assert case.line.endswith(b"\n") != case.hold, case.name


# --- classification ------------------------------------------------------------------------

def test_a_failure_during_a_pause_of_its_node_is_explained_and_retried() -> None:
    record = soak_record()
    window = record.open_window("pause", (2,), 10.0)
    failure = record.add_command(wallet(2, 11.0, 31.0, "no answer within 30 s"))
    record.close_window(window, 30.0)
    assert failure is not None and failure.explained_by is not None
    assert failure.explained_by.cause == "pause" and failure.retry_outcome == "pending"
    assert not record.add_retry(failure, failure.command.retried(45.0, 45.1, None))
    summary = record.summary()
    assert summary["explained_failures"] == 1 and summary["unexplained_failures"] == 0
    assert summary["explained_retries"]["ok"] == 1
    assert summary["passed"]


def test_a_failure_on_another_node_than_the_fault_is_unexplained() -> None:
    record = soak_record()
    record.open_window("pause", (2,), 10.0)
    failure = record.add_command(wallet(1, 11.0, 11.2, "WalletError: cannot reach the node"))
    assert failure is not None and failure.explained_by is None
    assert failure.retry_outcome is None
    summary = record.summary()
    assert summary["unexplained_failures"] == summary["unexplained_wallet_failures"] == 1
    assert not summary["passed"]


def test_a_link_cut_explains_failures_on_both_ends_until_the_grace_after_its_heal() -> None:
    record = soak_record()
    window = record.open_window("link_cut", (0, 3), 20.0)
    record.close_window(window, 21.0)
    within = 21.0 + FAULT_GRACE_S - 0.5
    after = 21.0 + FAULT_GRACE_S + 0.5
    for node in (0, 3):
        failure = record.add_command(wallet(node, within, within + 0.1, "reset"))
        assert failure is not None and failure.explained_by is not None
    late = record.add_command(wallet(0, after, after + 0.1, "reset"))
    before = record.add_command(wallet(3, 18.0, 19.9, "reset"))
    assert late is not None and late.explained_by is None
    assert before is not None and before.explained_by is None
    assert record.summary()["explained_by_cause"]["link_cut"] == 2


def test_an_explained_failure_whose_retry_fails_after_the_heal_fails_the_run() -> None:
    record = soak_record()
    window = record.open_window("pause", (1,), 5.0)
    failure = record.add_command(wallet(1, 6.0, 7.0, "timeout"))
    record.close_window(window, 20.0)
    assert failure is not None
    assert not record.add_retry(failure, failure.command.retried(40.0, 40.2, "refused"))
    assert failure.retry_outcome == "failed"
    summary = record.summary()
    assert summary["explained_retries"]["failed"] == 1 and summary["unexplained_failures"] == 0
    assert not summary["passed"]


def test_a_retry_that_fails_under_a_new_fault_is_tried_again_up_to_the_limit() -> None:
    record = soak_record()
    record.open_window("pause", (1,), 5.0)
    failure = record.add_command(wallet(1, 6.0, 7.0, "timeout"))
    assert failure is not None
    attempt = failure.command
    for number in range(1, RETRY_ATTEMPTS_MAX + 1):
        attempt = attempt.retried(7.0 + number, 7.5 + number, "timeout")  # the pause goes on
        again = record.add_retry(failure, attempt)
        assert again == (number < RETRY_ATTEMPTS_MAX)
    assert failure.retry_outcome == "failed" and len(failure.retries) == RETRY_ATTEMPTS_MAX
    assert attempt.attempt == RETRY_ATTEMPTS_MAX


def test_retries_are_counted_as_commands_but_never_as_new_failures() -> None:
    record = soak_record()
    record.open_window("pause", (0,), 0.0)
    failure = record.add_command(wallet(0, 1.0, 2.0, "timeout"))
    assert failure is not None
    assert record.add_command(failure.command.retried(3.0, 4.0, "timeout")) is None
    summary = record.summary()
    assert summary["wallet_commands"] == 2 and summary["wallet_failed"] == 2
    assert summary["explained_failures"] == 1 and len(record.failures) == 1


def test_a_crash_explains_the_failures_on_its_node_just_before_its_exit_was_seen() -> None:
    record = soak_record()
    early = record.add_command(wallet(2, 50.0 - CRASH_LOOKBACK_S - 20, 50.0 - CRASH_LOOKBACK_S
                                      - 19, "reset"))
    dying = record.add_command(wallet(2, 48.0, 48.1, "failed to open a stream"))
    other = record.add_command(wallet(1, 48.0, 48.1, "failed to open a stream"))
    crash, window, explained = record.add_crash(2, 50.0, 0, '{"event": "node_stopping", '
                                                          '"signal": "SIGTERM"}\n')
    assert explained == [dying]
    assert dying is not None and dying.explained_by is not None
    assert dying.explained_by.cause == "crash" and dying.retry_outcome == "pending"
    assert early is not None and early.explained_by is None
    assert other is not None and other.explained_by is None
    assert crash["stop_signal"] == "SIGTERM" and crash["after_hostile"] is None
    record.close_window(window, 55.0)
    summary = record.summary()
    assert summary["unexplained_failures"] == 2 and summary["explained_failures"] == 1
    assert summary["node_crashes"] == 1 and not summary["passed"]


def test_a_node_that_exits_soon_after_a_hostile_request_was_killed_by_it() -> None:
    record = soak_record()
    record.hostile_sent(3, "deep_nesting", 30.0)
    record.add_hostile({"t_s": 30.0, "node": 3, "case": "deep_nesting", "answer": "no_answer",
                        "node_lived": False}, expects_error=True)
    crash, _, _ = record.add_crash(3, 31.0, 1, "RecursionError")
    assert crash["after_hostile"] == "deep_nesting"
    hostile = record.summary()["hostile_admin"]
    assert hostile == {"sent": 1, "error_answers": 0, "missing_error_answer": 1,
                       "killed_node": 1}
    later, _, _ = record.add_crash(1, 30.0 + 60, 1, "")
    assert later["after_hostile"] is None


def test_a_hostile_request_answered_with_an_error_is_what_is_wanted() -> None:
    record = soak_record()
    record.add_hostile({"answer": "error", "node_lived": True}, expects_error=True)
    record.add_hostile({"answer": "result", "node_lived": True}, expects_error=True)
    record.add_hostile({"answer": "held", "node_lived": True}, expects_error=False)
    summary = record.summary()
    assert summary["hostile_admin"] == {"sent": 3, "error_answers": 1,
                                        "missing_error_answer": 1, "killed_node": 0}
    assert summary["passed"]  # an answer that should have been an error is reported, not fatal


@pytest.mark.parametrize(("raw", "judged"), [
    (b'{"jsonrpc":"2.0","id":1,"error":{"code":-32700,"message":"not JSON"}}\n', "error"),
    (b'{"jsonrpc":"2.0","id":1,"result":null}\n', "result"),
    (None, "no_answer"), (b"", "no_answer"), (b"Traceback (most recent", "not_json"),
])
def test_hostile_answers_are_judged(raw: bytes | None, judged: str) -> None:
    assert judge_answer(raw) == judged


def test_the_runs_interruption_leaves_waiting_retries_not_retried() -> None:
    record = soak_record()
    record.open_window("pause", (0,), 0.0)
    record.add_command(wallet(0, 1.0, 2.0, "timeout"))
    record.give_up_retries()
    assert record.summary()["explained_retries"]["not_retried"] == 1
    assert record.summary()["passed"]


# --- figures -------------------------------------------------------------------------------

def test_warm_up_is_a_tenth_of_the_run_and_at_least_two_intervals() -> None:
    assert warmup_s(7200, 60) == 720
    assert warmup_s(45, 10) == 20
    assert warmup_s(7200, 60, 3600) == 3600  # declared before the run: taken as it is


def test_interval_figures_are_count_and_p50_p99_of_the_successes() -> None:
    latencies = [float(ms) for ms in range(1, 101)]
    assert wallet_stats(latencies, failed=3) == {"count": 103, "ok": 100, "failed": 3,
                                                 "p50_ms": 50.0, "p99_ms": 99.0}
    assert wallet_stats([], failed=0)["p50_ms"] is None
    assert percentile([7.0], 0.99) == 7.0


def test_each_sample_closes_an_interval_of_the_wallet_commands_finished_in_it() -> None:
    record = soak_record()
    record.add_command(wallet(0, 0.0, 0.1))
    record.add_command(wallet(0, 0.2, 0.5))
    record.add_command(wallet(1, 0.6, 0.7, "refused"))
    first = record.add_interval(10.0, [sample(n) for n in range(4)], {})
    second = record.add_interval(20.0, [sample(n) for n in range(4)], {})
    assert (first["wallet"]["count"], first["wallet"]["ok"], first["wallet"]["p99_ms"]) == \
        (3, 2, 300.0)
    assert second["wallet"]["count"] == 0


def test_growth_compares_the_first_sample_after_warm_up_with_the_last() -> None:
    record = soak_record(nodes=2, duration_s=100, interval_s=10)  # warm-up: 20 s
    rss = {0: 150_000, 10: 120_000, 20: 100_000, 30: 101_000, 40: 103_000}
    for t_s, rss_kib in rss.items():
        tasks = None if t_s == 20 else 60  # node1's `connections` failed once: skipped
        record.add_interval(float(t_s), [sample(0, rss_kib=rss_kib), sample(1, tasks=tasks)],
                            {})
    summary = record.summary()
    node0 = summary["per_node"][0]
    assert node0["rss_kib"]["after_warmup"] == 100_000 and node0["rss_kib"]["last"] == 103_000
    assert node0["rss_kib"]["growth_pct"] == 3.0
    node1 = summary["per_node"][1]
    assert node1["tasks"]["after_warmup_t_s"] == 30.0 and node1["tasks"]["growth_pct"] == 0.0
    assert summary["growth_pct_max"] == {"rss_kib": 3.0, "rss_anon_kib": None, "fds": 0.0,
                                         "tasks": 0.0}
    assert summary["flat"]
    assert growth_pct(0, 5) is None and growth_pct(None, 5) is None


def test_a_node_sample_reads_what_the_connections_method_gives_and_nulls_the_rest() -> None:
    full = node_sample(1, alive=True, paused=False, rss_kib=1, fds=2,
                       status={"height": 9, "peers": 3},
                       connections={"by_kind": {"authority": 3, "observer": 0, "wallet": 5,
                                                "stranger": 1},
                                    "handshaking": 2, "open_fds": 40, "trio_tasks": 77,
                                    "refusals": {"per_key": 4}})
    assert full["connections"] == {"authority": 3, "observer": 0, "wallet": 5, "stranger": 1}
    assert (full["tasks"], full["handshaking"], full["open_fds_reported"]) == (77, 2, 40)
    assert (full["refusals"], full["height"], full["peers"]) == ({"per_key": 4}, 9, 3)
    partial = node_sample(1, alive=True, paused=True, rss_kib=None, fds=None, status=None,
                          connections={"by_kind": {"wallet": "many"}})
    assert partial["connections"] == {"authority": None, "observer": None, "wallet": None,
                                      "stranger": None}
    assert partial["tasks"] is None and partial["refusals"] is None and partial["paused"]
    missing = node_sample(0, alive=False, paused=False, rss_kib=None, fds=None, status=None,
                          connections=None)
    assert missing["connections"] is None and not missing["alive"]


def test_rss_is_read_from_proc_status_and_stop_signals_from_the_node_log() -> None:
    assert parse_vm_rss_kib("Name:\tpython\nVmRSS:\t   95836 kB\nThreads: 3\n") == 95836
    assert parse_vm_rss_kib("Name:\tzombie\n") is None
    assert parse_vm_rss_kib("VmRSS:\t 95836 kB\nRssAnon:\t 70100 kB\n", "RssAnon") == 70100
    log = ('{"event": "block_committed"}\n{"event": "node_stopping", "signal": "SIGINT"}\n'
           '{"event": "node_stopped"}\n')
    assert stop_signal_in_log(log) == "SIGINT"
    assert stop_signal_in_log('{"event": "block_committed"}\nTraceback') is None


def test_the_plot_series_sum_connections_over_nodes_and_leave_gaps_where_unmeasured() -> None:
    record = soak_record(nodes=2)
    record.add_interval(0.0, [sample(0), sample(1)], {})
    record.add_interval(60.0, [sample(0, rss_kib=None), sample(1, tasks=None)], {})
    window = record.open_window("pause", (1,), 30.0)
    record.close_window(window, 45.0)
    series = plot_series(record.to_json())
    assert series["minutes"] == [0.0, 1.0]
    assert series["connections"]["authority"] == [6.0, 3.0]
    assert math.isnan(series["connections"]["stranger"][0])
    assert math.isnan(series["rss_mib"][0][1]) and math.isnan(series["tasks"][1][1])
    assert series["faults"] == [{"cause": "pause", "start": 0.5, "end": 0.75}]


# --- real runs ------------------------------------------------------------------------------

def soak_command(out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "healthnode", "soak", "--nodes", "4", "--out", str(out),
            *options]


def node_processes_of(directory: Path) -> list[int]:
    """Pids of processes whose command line names `directory` (the soak's nodes)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(directory).encode() in cmdline and b"run" in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.slow
def test_a_short_soak_of_four_nodes_records_every_node_and_runs_wallet_commands(
        tmp_path: Path) -> None:
    out = tmp_path / "soak"
    finished = subprocess.run(
        soak_command(out, "--duration", "40", "--interval-s", "10", "--nemesis-every-s", "12",
                     "--seed", "1"),
        capture_output=True, text=True, timeout=240, cwd=REPO, check=False)
    document = json.loads((out / "soak.json").read_text())
    summary = document["summary"]
    assert finished.returncode == 0 and summary["passed"], (summary, finished.stderr[-3000:])
    printed = json.loads(finished.stdout.strip().splitlines()[-1])
    assert printed == summary
    # One sample at the start, one per 10 s, one at the end; each with every node's figures.
    assert len(document["intervals"]) >= 4
    for interval in document["intervals"]:
        assert [s["node"] for s in interval["nodes"]] == [0, 1, 2, 3]
        for node_figures in interval["nodes"]:
            if node_figures["alive"]:
                assert node_figures["rss_kib"] > 10_000 and node_figures["fds"] > 0
    for node in summary["per_node"]:
        assert node["rss_kib"]["after_warmup"] is not None and node["fds"]["last"] is not None
    # Wallet commands ran, of every kind, and succeeded (the writes too).
    commands = [json.loads(line) for line in (out / "commands.jsonl").read_text().splitlines()]
    succeeded = {(c["source"], c["kind"]) for c in commands if c["ok"]}
    assert {("row", "nonce"), ("row", "audit"), ("row", "records"), ("row", "record_add"),
            ("burst", "nonce"), ("burst", "audit")} <= succeeded, succeeded
    assert summary["wallet_ok"] >= 50, summary
    assert summary["wallet_commands"] == sum(1 for c in commands if c["family"] == "wallet")
    assert summary["hostile_admin"]["sent"] >= 1 and summary["admin_requests"] >= 5
    assert sum(summary["faults"].values()) >= 1 and sum(summary["hangups"].values()) >= 2
    if document["plot"].get("written"):
        assert (out / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib" in document["plot"]["skipped"]
    assert node_processes_of(out / "net") == []


@pytest.mark.slow  # 12 s: in CI's slow step (.ci/run), out of the default suite's time
def test_sigterm_stops_the_soak_and_its_nodes_and_still_writes_the_files(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    process = subprocess.Popen(soak_command(out, "--duration", "600", "--interval-s", "5"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO)
    try:
        deadline = time.monotonic() + 90
        while not (out / "soak.json").exists():  # the first sample is taken at the start
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no sample within 90 s"
            time.sleep(0.2)
        time.sleep(3)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    document = json.loads((out / "soak.json").read_text())
    assert process.returncode == 0 and document["summary"]["passed"], stderr[-3000:]
    assert document["summary"]["interrupted"] is True
    assert document["summary"]["ran_s"] < 60
    assert len(document["intervals"]) >= 2  # the first, and the last on the way out
    assert json.loads(stdout.strip().splitlines()[-1]) == document["summary"]
    assert node_processes_of(out / "net") == []


def test_counts_are_judged_by_their_floors_and_memory_by_first_and_last() -> None:
    """A burst in flight at the last sample (files 20 -> 30) is not growth; a floor that rises
    (what the node holds when idle) is. Memory keeps the first-against-last rule."""
    record = soak_record(nodes=1, duration_s=4000, interval_s=100)  # warm-up: 400 s
    for t_s in range(0, 4001, 100):
        fds = 30 if t_s == 4000 else 20  # a burst at the last sample
        tasks = 60 + (10 if t_s >= 3400 else 0)  # a floor that rises by 10 (a leak)
        record.add_interval(float(t_s), [sample(0, fds=fds, tasks=tasks)], {})
    summary = record.summary()
    node = summary["per_node"][0]
    assert node["fds"]["growth_pct"] == 50.0 and node["fds"]["floor_growth_pct"] == 0.0
    assert node["tasks"]["floor_growth_pct"] == 16.7
    assert summary["judged_growth_pct_max"]["fds"] == 0.0
    assert not summary["flat"]  # the tasks' floor rose
