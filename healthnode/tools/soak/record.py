"""What a soak saw, and what it means: pure bookkeeping (no I/O, no clock, no trio).

Theory of operation. The runner feeds `SoakRecord` with facts, each stamped with seconds since
the start of the run (`t_s`, measured by the runner): every finished wallet or admin command,
every fault window (opened when the nemesis acts, closed when it heals), every hostile admin
request and its answer, every node crash, and every `--interval-s` one sample per node. From
those alone it derives everything the soak reports, so a unit test can drive it with made-up
times:

- **Classification.** A failed command is *explained* when a fault window on the command's node
  overlaps the time it ran, stretched by `FAULT_GRACE_S` after the heal (a node resumed from
  SIGSTOP, or whose authority link was cut and redialled, gets a few seconds to settle). The
  causes are the nemesis' `pause` and `link_cut`, and `crash` (the node exited on its own and was
  restarted; the crash itself already fails the run). An explained failure is retried once its
  node is quiet again, up to `RETRY_ATTEMPTS_MAX` times; the retries' outcome is recorded on it.
  A failure no window explains is *unexplained*.
- **Intervals.** Each sample closes an interval: the wallet commands that finished in it, how many
  failed, and the p50 and p99 latency of those that succeeded.
- **Growth.** Per node and resource (RSS, open file descriptors, trio tasks): the first sample at
  or after the warm-up (declared with `--warmup-s` before the run starts; by default the first
  10 % of the run, and at least two intervals) against the last sample, in per cent.
- **Crashes.** A node that exits without the soak stopping it has crashed; the crash is blamed
  on a hostile admin request when one went to that node less than `HOSTILE_BLAME_S` before.
- **Verdict.** The run passes when no node crashed, no failure is unexplained, no explained
  failure failed again when retried after the heal, and no hostile admin request killed a node.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

FAULT_GRACE_S: Final = 10.0  # a node is given this long after a heal before failures count
RETRY_ATTEMPTS_MAX: Final = 3  # an explained failure's retries; a fault during one allows another
WARMUP_FRACTION: Final = 0.10
WARMUP_INTERVALS_MIN: Final = 2
FAILURES_KEPT_MAX: Final = 2_000  # in full in soak.json; the counts stay exact beyond it
EVENTS_KEPT_MAX: Final = 5_000  # hostile requests, faults, crashes: ~400 in a 2-hour run
FLAT_GROWTH_PCT: Final = 5.0  # issue 18: after warm-up, less than 5 % growth counts as flat
# Open files and tasks are small counts that move with the work in flight at the instant of a
# sample (a burst of wallets: +10 files, +100 tasks), so one sample against another says little:
# one file more than 20 is 5 %. What a leak raises is what the node holds when idle, the floor.
# So counts are judged by their lowest value in the first FLOOR_WINDOW_S after the warm-up against
# their lowest in the last FLOOR_WINDOW_S. Declared after run 7 (docs/reliability.md), for the
# runs after it; memory is judged from the first sample after the warm-up to the last, as before.
FLOOR_WINDOW_S: Final = 600.0
COUNTS: Final = ("fds", "tasks")
# `rss_anon_kib` is the process's own memory (RssAnon): RSS less the pages of mapped files (the
# libraries, LevelDB's table files, which it maps to read them), which the kernel can reclaim.
RESOURCES: Final = ("rss_kib", "rss_anon_kib", "fds", "tasks")
CONNECTION_KINDS: Final = ("authority", "observer", "wallet", "stranger")
HOSTILE_BLAME_S: Final = 10.0  # a node that exits this soon after a hostile request: killed by it
# A node going down fails commands before its exit is seen (a clean stop takes a second or two,
# the supervisor looks every half second): its crash window starts this much earlier.
CRASH_LOOKBACK_S: Final = 5.0
RECLASSIFY_SCAN_MAX: Final = 500  # the latest failures looked at when a crash explains them late


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """A time during which failures on `nodes` are expected. `end_s` None: still going on."""

    cause: str  # "pause" | "link_cut" | "crash"
    nodes: tuple[int, ...]
    start_s: float
    end_s: float | None = None

    def covers(self, node: int, from_s: float, to_s: float, grace_s: float) -> bool:
        end_s = math.inf if self.end_s is None else self.end_s + grace_s
        return node in self.nodes and from_s <= end_s and to_s >= self.start_s

    def to_json(self) -> dict[str, Any]:
        return {"cause": self.cause, "nodes": list(self.nodes), "start_s": self.start_s,
                "end_s": self.end_s}


def explaining_window(windows: list[FaultWindow], node: int, started_s: float, ended_s: float,
                      grace_s: float = FAULT_GRACE_S) -> FaultWindow | None:
    """The most recent window that explains a failure on `node` of a command that ran from
    `started_s` to `ended_s`, or None: the failure is unexplained."""
    for window in reversed(windows):
        if window.covers(node, started_s, ended_s, grace_s):
            return window
    return None


def node_quiet(windows: list[FaultWindow], node: int, now_s: float,
               grace_s: float = FAULT_GRACE_S) -> bool:
    """Whether no fault is on `node` now, nor healed less than `grace_s` ago: time to retry."""
    return explaining_window(windows, node, now_s, now_s, grace_s) is None


@dataclass(frozen=True, slots=True)
class CommandResult:
    """One finished command. `family`: "wallet" or "admin"; `source`: what issued it ("row",
    "burst", "admin", "half_line_check"); `kind`: the wallet command or admin method; `attempt`:
    0 for a first try, 1.. for the retries of an explained failure."""

    family: str
    source: str
    kind: str
    node: int
    started_s: float
    ended_s: float
    error: str | None = None  # None: it succeeded
    attempt: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def latency_ms(self) -> float:
        return round((self.ended_s - self.started_s) * 1000, 1)

    def retried(self, started_s: float, ended_s: float, error: str | None) -> CommandResult:
        """The result of this command's next retry."""
        return dataclasses.replace(self, started_s=started_s, ended_s=ended_s, error=error,
                                   attempt=self.attempt + 1)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"family": self.family, "source": self.source,
                                    "kind": self.kind, "node": self.node,
                                    "started_s": self.started_s, "ended_s": self.ended_s,
                                    "latency_ms": self.latency_ms, "ok": self.ok}
        if self.attempt:
            document["attempt"] = self.attempt
        if self.error is not None:
            document["error"] = self.error
        return document


@dataclass(slots=True)
class Failure:
    number: int
    command: CommandResult
    explained_by: FaultWindow | None
    retries: list[CommandResult] = field(default_factory=list)
    # For an explained failure: "pending", then "ok", "failed" or "not_retried" (run ended).
    retry_outcome: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"number": self.number, **self.command.to_json(),
                "explained": self.explained_by is not None,
                "explained_by": self.explained_by.to_json() if self.explained_by else None,
                "retry_outcome": self.retry_outcome,
                "retries": [r.to_json() for r in self.retries]}


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (`fraction` in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def wallet_stats(latencies_ok_ms: list[float], failed: int) -> dict[str, Any]:
    return {"count": len(latencies_ok_ms) + failed, "ok": len(latencies_ok_ms),
            "failed": failed, "p50_ms": percentile(latencies_ok_ms, 0.50),
            "p99_ms": percentile(latencies_ok_ms, 0.99)}


def warmup_s(duration_s: float, interval_s: float, declared_s: float | None = None) -> float:
    """The warm-up: `declared_s` when the run declared one before it started (`--warmup-s`),
    else the first 10 % of the run, and at least two intervals."""
    if declared_s is not None:
        return declared_s
    return max(WARMUP_FRACTION * duration_s, WARMUP_INTERVALS_MIN * interval_s)


def growth_pct(first: float | None, last: float | None) -> float | None:
    if first is None or last is None or first <= 0:
        return None
    return round((last - first) / first * 100, 1)


def parse_vm_rss_kib(proc_status: str, field: str = "VmRSS") -> int | None:
    """VmRSS (or another `field` in KiB, e.g. RssAnon) from the text of /proc/<pid>/status (None
    if absent: a zombie)."""
    for line in proc_status.splitlines():
        if line.startswith(f"{field}:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
    return None


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def node_sample(node: int, *, alive: bool, paused: bool, rss_kib: int | None, fds: int | None,
                status: Any, connections: Any, rss_anon_kib: int | None = None
                ) -> dict[str, Any]:
    """One node's figures at a sample. `status` and `connections` are the admin methods'
    results (None when they could not be asked or failed); `connections` is read defensively:
    a node without the method, or with fewer keys, gives None for what is missing."""
    connections = connections if isinstance(connections, dict) else {}
    by_kind_raw = connections.get("by_kind")
    by_kind = ({kind: _int_or_none(by_kind_raw.get(kind)) for kind in CONNECTION_KINDS}
               if isinstance(by_kind_raw, dict) else None)
    refusals_raw = connections.get("refusals")
    refusals = ({str(k): v for k, v in refusals_raw.items() if type(v) is int}
                if isinstance(refusals_raw, dict) else None)
    status = status if isinstance(status, dict) else {}
    return {"node": node, "alive": alive, "paused": paused, "rss_kib": rss_kib,
            "rss_anon_kib": rss_anon_kib, "fds": fds,
            "tasks": _int_or_none(connections.get("trio_tasks")),
            "connections": by_kind,
            "handshaking": _int_or_none(connections.get("handshaking")),
            "open_fds_reported": _int_or_none(connections.get("open_fds")),
            "store_memory_bytes": _int_or_none(connections.get("store_memory_bytes")),
            "refusals": refusals, "height": _int_or_none(status.get("height")),
            "peers": _int_or_none(status.get("peers"))}


def judge_answer(raw: bytes | None) -> str:
    """What a hostile admin request got back: "error" (a JSON-RPC error: right), "result" (it
    was answered as if valid), "not_json", or "no_answer" (closed or timed out)."""
    if not raw:
        return "no_answer"
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        return "not_json"
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        return "error"
    if isinstance(document, dict) and "result" in document:
        return "result"
    return "not_json"


def stop_signal_in_log(log_tail: str) -> str | None:
    """The signal a node logged as the reason it stopped (`node_stopping`), if it did: an exit
    with a clean stop on SIGTERM came from outside the node, not from its own bug."""
    for line in reversed(log_tail.splitlines()):
        if '"node_stopping"' not in line:
            continue
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and isinstance(document.get("signal"), str):
            return str(document["signal"])
    return None


def _window_causes() -> dict[str, int]:
    return {"pause": 0, "link_cut": 0, "crash": 0}


@dataclass
class SoakRecord:
    """Everything a soak gathered; `to_json` is soak.json."""

    config: dict[str, Any]
    node_count: int
    windows: list[FaultWindow] = field(default_factory=list)
    intervals: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    hostile: list[dict[str, Any]] = field(default_factory=list)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    hangups: dict[str, dict[str, int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    explained_by_cause: dict[str, int] = field(default_factory=_window_causes)
    _interval_latencies_ms: list[float] = field(default_factory=list)
    _interval_failed: int = 0
    # Every successful wallet command's latency: ~40,000 floats in a 2-hour run.
    _all_latencies_ms: list[float] = field(default_factory=list)
    _failure_numbers: int = 0
    _last_hostile: dict[int, tuple[str, float]] = field(default_factory=dict)
    ended_s: float | None = None
    interrupted: bool = False
    error: str | None = None  # the run could not be made (the network did not start)

    def _count(self, name: str, by: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + by

    # --- faults ------------------------------------------------------------------------------

    def open_window(self, cause: str, nodes: tuple[int, ...], start_s: float) -> int:
        self.windows.append(FaultWindow(cause, nodes, start_s))
        return len(self.windows) - 1

    def close_window(self, index: int, end_s: float) -> None:
        self.windows[index] = dataclasses.replace(self.windows[index], end_s=end_s)

    def add_fault(self, event: dict[str, Any]) -> None:
        self._count(f"fault_{event['kind']}" if event.get("applied") else "fault_not_applied")
        if len(self.faults) < EVENTS_KEPT_MAX:
            self.faults.append(event)

    def hostile_sent(self, node: int, case: str, t_s: float) -> None:
        """Note a hostile request as it leaves, before its answer: a crash it causes may be
        seen before the answer (or its absence) is."""
        self._last_hostile[node] = (case, t_s)

    def add_crash(self, node: int, t_s: float, returncode: int | None,
                  log_tail: str) -> tuple[dict[str, Any], int, list[Failure]]:
        """A node exited that the soak did not stop, seen at `t_s`. Opens its crash window
        (from CRASH_LOOKBACK_S before; the runner closes it once the node answers again) and
        re-classifies the failures on that node that the window now explains. The crash is
        blamed on a hostile admin request when one went to that node less than HOSTILE_BLAME_S
        before. Returns the crash event, the window, and the failures newly explained."""
        last = self._last_hostile.get(node)
        after_hostile = last[0] if last is not None and t_s - last[1] <= HOSTILE_BLAME_S else None
        event = {"node": node, "t_s": t_s, "returncode": returncode,
                 "stop_signal": stop_signal_in_log(log_tail),
                 "after_hostile": after_hostile, "log_tail": log_tail}
        self._count("node_crashes")
        if after_hostile is not None:
            self._count("crashes_after_hostile")
        if len(self.crashes) < EVENTS_KEPT_MAX:
            self.crashes.append(event)
        window = self.open_window("crash", (node,), round(t_s - CRASH_LOOKBACK_S, 3))
        return event, window, self._explain_afterwards(self.windows[window])

    def _explain_afterwards(self, window: FaultWindow) -> list[Failure]:
        explained = []
        for failure in self.failures[-RECLASSIFY_SCAN_MAX:]:
            command = failure.command
            if failure.explained_by is None and window.covers(
                    command.node, command.started_s, command.ended_s, FAULT_GRACE_S):
                failure.explained_by = window
                failure.retry_outcome = "pending"
                self._count("unexplained_failures", -1)
                self._count(f"unexplained_{command.family}_failures", -1)
                self._count("explained_failures")
                self.explained_by_cause[window.cause] += 1
                explained.append(failure)
        return explained

    def add_hostile(self, event: dict[str, Any], expects_error: bool) -> None:
        self._count("hostile_sent")
        if event.get("answer") == "error":
            self._count("hostile_error_answers")
        elif expects_error:
            self._count("hostile_missing_error_answer")
        if len(self.hostile) < EVENTS_KEPT_MAX:
            self.hostile.append(event)

    def add_hangup(self, family: str, kind: str, outcome: str) -> None:
        per_kind = self.hangups.setdefault(f"{family}:{kind}", {})
        per_kind[outcome] = per_kind.get(outcome, 0) + 1

    # --- commands ----------------------------------------------------------------------------

    def add_command(self, result: CommandResult) -> Failure | None:
        """Count a finished command. A failure of a first attempt is classified and kept, and
        returned (the runner retries it when it is explained); a retry's own result is counted
        here and judged by `add_retry`."""
        family = result.family
        self._count(f"{family}_commands")
        if result.ok:
            self._count(f"{family}_ok")
            if family == "wallet":
                self._interval_latencies_ms.append(result.latency_ms)
                self._all_latencies_ms.append(result.latency_ms)
            return None
        self._count(f"{family}_failed")
        if family == "wallet":
            self._interval_failed += 1
        if result.attempt > 0:
            return None
        window = explaining_window(self.windows, result.node, result.started_s, result.ended_s)
        self._failure_numbers += 1
        failure = Failure(self._failure_numbers, result, window,
                          retry_outcome="pending" if window is not None else None)
        if window is None:
            self._count("unexplained_failures")
            self._count(f"unexplained_{family}_failures")
        else:
            self._count("explained_failures")
            self.explained_by_cause[window.cause] = self.explained_by_cause.get(
                window.cause, 0) + 1
        if len(self.failures) < FAILURES_KEPT_MAX:
            self.failures.append(failure)
        return failure

    def add_retry(self, failure: Failure, attempt: CommandResult) -> bool:
        """Record a retry of an explained failure; whether to retry once more (the attempt
        failed under a new fault and attempts remain)."""
        assert failure.explained_by is not None and failure.retry_outcome == "pending"
        failure.retries.append(attempt)
        if attempt.ok:
            failure.retry_outcome = "ok"
            return False
        under_fault = explaining_window(self.windows, attempt.node, attempt.started_s,
                                        attempt.ended_s) is not None
        if under_fault and len(failure.retries) < RETRY_ATTEMPTS_MAX:
            return True
        failure.retry_outcome = "failed"
        return False

    def give_up_retries(self) -> None:
        """At the end of the run: whatever is still waiting for a quiet node was not retried."""
        for failure in self.failures:
            if failure.retry_outcome == "pending":
                failure.retry_outcome = "not_retried"

    # --- samples -----------------------------------------------------------------------------

    def add_interval(self, t_s: float, nodes: list[dict[str, Any]],
                     load_process: dict[str, Any]) -> dict[str, Any]:
        """Close the current interval with one sample per node (node_sample)."""
        interval = {"t_s": t_s, "nodes": nodes,
                    "wallet": wallet_stats(self._interval_latencies_ms, self._interval_failed),
                    "load_process": load_process}
        self._interval_latencies_ms = []
        self._interval_failed = 0
        self.intervals.append(interval)
        return interval

    # --- results -----------------------------------------------------------------------------

    def node_growth(self, node: int, resource: str, warmup: float) -> dict[str, Any]:
        values = [(interval["t_s"], interval["nodes"][node].get(resource))
                  for interval in self.intervals if node < len(interval["nodes"])]
        values = [(t_s, value) for t_s, value in values if value is not None]
        after = [(t_s, value) for t_s, value in values if t_s >= warmup]
        if not after:
            return {"after_warmup": None, "after_warmup_t_s": None, "last": None,
                    "last_t_s": None, "growth_pct": None}
        (first_t, first), (last_t, last) = after[0], after[-1]
        early = [value for t_s, value in after if t_s < first_t + FLOOR_WINDOW_S]
        late = [value for t_s, value in after if t_s > last_t - FLOOR_WINDOW_S]
        return {"after_warmup": first, "after_warmup_t_s": first_t, "last": last,
                "last_t_s": last_t, "growth_pct": growth_pct(first, last),
                "floor_after_warmup": min(early), "floor_last": min(late),
                "floor_growth_pct": growth_pct(min(early), min(late))}

    def summary(self) -> dict[str, Any]:
        counts = self.counts
        warmup = float(self.config["warmup_s"]) if "warmup_s" in self.config else warmup_s(
            float(self.config["duration_s"]), float(self.config["interval_s"]))
        nodes = []
        for node in range(self.node_count):
            per_node: dict[str, Any] = {"node": node}
            for resource in RESOURCES:
                per_node[resource] = self.node_growth(node, resource, warmup)
            per_node["crashes"] = sum(1 for crash in self.crashes if crash["node"] == node)
            nodes.append(per_node)
        growth_max: dict[str, float | None] = {}
        judged_max: dict[str, float | None] = {}  # what `flat` is decided on (FLOOR_WINDOW_S)
        for resource in RESOURCES:
            growths = [n[resource]["growth_pct"] for n in nodes
                       if n[resource]["growth_pct"] is not None]
            growth_max[resource] = max(growths) if growths else None
            judged = [n[resource]["floor_growth_pct" if resource in COUNTS else "growth_pct"]
                      for n in nodes if n[resource]["growth_pct"] is not None]
            judged = [g for g in judged if g is not None]
            judged_max[resource] = max(judged) if judged else None
        retry_outcomes = {"ok": 0, "failed": 0, "pending": 0, "not_retried": 0}
        for failure in self.failures:
            if failure.retry_outcome is not None:
                retry_outcomes[failure.retry_outcome] += 1
        summary = {
            "error": self.error,
            "duration_s": self.config["duration_s"],
            "ran_s": self.ended_s,
            "interrupted": self.interrupted,
            "nodes": self.node_count,
            "warmup_s": warmup,
            "samples": len(self.intervals),
            "per_node": nodes,
            "growth_pct_max": growth_max,
            "judged_growth_pct_max": judged_max,
            # Flat: every resource measured grew less than 5 %: memory from the first sample
            # after the warm-up to the last, counts by their floors (FLOOR_WINDOW_S). A run from
            # before RssAnon was sampled has none of it; RSS itself must be there.
            "flat": judged_max["rss_kib"] is not None and all(
                g < FLAT_GROWTH_PCT for g in judged_max.values() if g is not None),
            "wallet_commands": counts.get("wallet_commands", 0),
            "wallet_ok": counts.get("wallet_ok", 0),
            "wallet_failed": counts.get("wallet_failed", 0),
            "wallet_latency_ms": {"p50": percentile(self._all_latencies_ms, 0.50),
                                  "p99": percentile(self._all_latencies_ms, 0.99)},
            "admin_requests": counts.get("admin_commands", 0),
            "admin_failed": counts.get("admin_failed", 0),
            "unexplained_failures": counts.get("unexplained_failures", 0),
            "unexplained_wallet_failures": counts.get("unexplained_wallet_failures", 0),
            "unexplained_admin_failures": counts.get("unexplained_admin_failures", 0),
            "explained_failures": counts.get("explained_failures", 0),
            "explained_by_cause": dict(self.explained_by_cause),
            "explained_retries": retry_outcomes,
            "failures_kept": len(self.failures),
            "node_crashes": counts.get("node_crashes", 0),
            "faults": {"pause": counts.get("fault_pause", 0),
                       "link_cut": counts.get("fault_link_cut", 0),
                       "not_applied": counts.get("fault_not_applied", 0)},
            "hostile_admin": {"sent": counts.get("hostile_sent", 0),
                              "error_answers": counts.get("hostile_error_answers", 0),
                              "missing_error_answer": counts.get(
                                  "hostile_missing_error_answer", 0),
                              "killed_node": counts.get("crashes_after_hostile", 0)},
            "hangups": {name: sum(outcomes.values()) for name, outcomes in
                        sorted(self.hangups.items())},
        }
        summary["passed"] = verdict(summary)
        return summary

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "summary": self.summary(),
                "intervals": self.intervals,
                "failures": [failure.to_json() for failure in self.failures],
                "faults": self.faults, "fault_windows": [w.to_json() for w in self.windows],
                "hostile_admin": self.hostile, "crashes": self.crashes,
                "hangups": self.hangups}


def verdict(summary: dict[str, Any]) -> bool:
    """Whether the run passed (see the module docstring)."""
    return (summary["error"] is None and summary["node_crashes"] == 0
            and summary["unexplained_failures"] == 0
            and summary["explained_retries"]["failed"] == 0
            and summary["hostile_admin"]["killed_node"] == 0)
