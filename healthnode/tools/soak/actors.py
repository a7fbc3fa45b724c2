"""The soak's actors (`Soak`): every concurrent client, fault and watcher of one run, and the
samples.

Theory of operation. `Soak.main` waits until every node answers `status` with a final block, and
then one nursery holds every actor of the run, and none outlives it:

    wallets_in_a_row   one wallet command after another, rotating over nodes (a paused one
                       is passed over) and patients
    bursts             --wallets-at-once commands at once against one node, every 15-45 s
    hangups            a wallet that hangs up mid-request and a raw TCP client, every 3-9 s
    admin_load         status / peers / block on a node's admin socket, every 1-3 s
    hostile_admin      one malformed admin request (plan.HOSTILE_CASES), every 8-25 s
    nemesis            one fault at a time: an authority link cut, or a node paused 10-30 s
    supervise          a node that exits on its own is a crash: recorded, then started again
    retrier            an explained failure is retried once its node is quiet again
    sampler            every --interval-s: RSS, open fds, tasks, connections per node

Every fact goes to `SoakRecord` (record.py) stamped with seconds since the load started; all
judgement (explained or not, growth, verdict) is made there. When the nursery is cancelled (the
duration is over, or a signal came) one last sample is taken; soak.json is rewritten after every
sample.

Randomness comes from `random.Random` instances seeded from --seed, one per actor, so the
schedule of faults, hostile requests and hang-ups replays; the nodes' answers need not.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import trio

from healthnode.admin.client import AdminError, call
from healthnode.crypto import Identity
from healthnode.tools.soak import plan
from healthnode.tools.soak.load import (
    COMMAND_TIMEOUT_S,
    HANGUP_TIMEOUT_S,
    PATIENTS,
    Patient,
    admin_exchange,
    hold_half_line,
    tcp_hangup,
    timed,
    wallet_command,
    wallet_hangup,
)
from healthnode.tools.soak.nodes import Nodes, SoakError, link_up, link_ups, proc_figures
from healthnode.tools.soak.record import (
    CommandResult,
    Failure,
    SoakRecord,
    judge_answer,
    node_quiet,
    node_sample,
)

READY_TIMEOUT_S: Final = 60.0
ADMIN_TIMEOUT_S: Final = 5.0  # issue 18: `status` must answer within 5 s, even under load
HOSTILE_ANSWER_TIMEOUT_S: Final = 10.0
HOSTILE_SETTLE_S: Final = 1.0  # after a hostile answer, before looking whether the node lives
LINK_HEAL_TIMEOUT_S: Final = 60.0  # a cut link redials within seconds; a minute is a finding
LINK_POLL_S: Final = 0.1
SUPERVISE_EVERY_S: Final = 0.5
RESTART_DELAY_S: Final = 1.0
RESTARTS_MAX: Final = 20  # per node: a node that crashes this often is left down, not looped
RERUNS_KEPT_MAX: Final = 500  # as record.RECLASSIFY_SCAN_MAX: the failures a crash may explain
RETRY_QUEUE_MAX: Final = 1_000  # explained failures awaiting a quiet node; beyond: not retried
QUIET_POLL_S: Final = 0.5
FINAL_SAMPLE_TIMEOUT_S: Final = 20.0
UNEXPLAINED_LOGGED_MAX: Final = 20  # on stderr; soak.json keeps them all (up to its limit)
METHOD_NOT_FOUND: Final = "(code -32601)"


@dataclass(frozen=True, slots=True)
class SoakOptions:
    nodes: int
    duration_s: float
    out: Path
    seed: int
    wallets_at_once: int = 10
    interval_s: float = 60.0
    warmup_s: float | None = None  # declared before the run; None: 10 % of it (soak/record.py)
    nemesis_every_s: float = plan.NEMESIS_EVERY_S_DEFAULT


Rerun = Callable[[], Awaitable[tuple[float, float, str | None]]]


class Soak:
    """The actors of one run (see the module docstring), sharing `record` and `nodes`."""

    def __init__(self, options: SoakOptions, nodes: Nodes, record: SoakRecord,
                 log: Callable[[str], None]) -> None:
        self.options = options
        self.nodes = nodes
        self.record = record
        self.log = log
        self.started: float | None = None
        self.patients = [Patient(Identity.generate()) for _ in range(PATIENTS)]
        self.heights = [1] * nodes.count
        self.restarting: set[int] = set()
        self.restarts = [0] * nodes.count
        self.missing_methods: set[str] = set()
        self.numbers = itertools.count()
        self.unexplained_logged = 0
        self.reruns: dict[int, Rerun] = {}  # the latest unexplained failures, by number
        self.retry_send, self.retry_receive = trio.open_memory_channel[tuple[Failure, Rerun]](
            RETRY_QUEUE_MAX)
        self.commands_log: IO[str] = (options.out / "commands.jsonl").open("a", encoding="utf-8")

    def now(self) -> float:
        return 0.0 if self.started is None else round(time.monotonic() - self.started, 3)

    def rng(self, actor: str) -> random.Random:
        # A replayable schedule, not a secret (S311 is beside the point).
        return random.Random(f"{self.options.seed}/{actor}")  # noqa: S311

    def close(self) -> None:
        self.commands_log.close()

    # --- the run -----------------------------------------------------------------------------

    async def main(self) -> None:
        await self.wait_ready()
        self.started = time.monotonic()
        self.log(f"soak: {self.nodes.count} nodes ready; load for {self.options.duration_s:.0f} s")
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.watch_signals, signals, nursery.cancel_scope)
                nursery.start_soon(self.end_after, nursery.cancel_scope)
                nursery.start_soon(self.sampler)
                nursery.start_soon(self.wallets_in_a_row)
                nursery.start_soon(self.bursts)
                nursery.start_soon(self.hangups)
                nursery.start_soon(self.admin_load)
                nursery.start_soon(self.hostile_admin)
                nursery.start_soon(self.nemesis)
                nursery.start_soon(self.supervise, nursery)
                nursery.start_soon(self.retrier, self.retry_receive)
            self.record.ended_s = self.now()
            self.log(f"soak: load stopped at t={self.record.ended_s:.0f}s; last sample")
            with trio.move_on_after(FINAL_SAMPLE_TIMEOUT_S):
                await self.sample()

    async def watch_signals(self, signals: Any, scope: trio.CancelScope) -> None:
        async for signum in signals:
            self.log(f"soak: signal {signum}: stopping and writing what was gathered")
            self.record.interrupted = True
            scope.cancel()
            return

    async def end_after(self, scope: trio.CancelScope) -> None:
        await trio.sleep(self.options.duration_s)
        scope.cancel()

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        waiting = set(range(self.nodes.count))
        while waiting:
            for index in sorted(waiting):
                if not self.nodes.alive(index):
                    raise SoakError(f"node{index} exited while starting:\n"
                                    f"{self.nodes.log_tail(index)[-600:]}")
                try:
                    status = await self.admin(index, "status", {}, timeout_s=1.0)
                except AdminError:
                    continue
                # Ready once it holds a final block: a wallet proves what it acts on against
                # a certified head, and there is none before the first block.
                if isinstance(status, dict) and isinstance(status.get("height"), int) \
                        and status["height"] >= 1:
                    waiting.discard(index)
            if time.monotonic() > deadline:
                raise SoakError(f"nodes {sorted(waiting)} did not answer `status` with a final "
                                f"block within {READY_TIMEOUT_S:.0f} s")
            await trio.sleep(0.2)

    # --- plumbing ----------------------------------------------------------------------------

    async def admin(self, node: int, method: str, params: dict[str, Any],
                    timeout_s: float = ADMIN_TIMEOUT_S) -> Any:
        # Not abandoned on cancel: the call's own timeout ends the thread within seconds.
        answer = await trio.to_thread.run_sync(functools.partial(
            call, self.nodes.admin_sockets[node], method, params, timeout_s=timeout_s))
        if method == "status" and isinstance(answer, dict) and type(answer.get("height")) is int:
            self.heights[node] = max(1, answer["height"])
        return answer

    async def optional_admin(self, node: int, method: str) -> Any:
        """A method the node may not have yet (e.g. `connections`): None if it is missing or
        fails, and a missing method is said once."""
        try:
            return await self.admin(node, method, {})
        except AdminError as error:
            if METHOD_NOT_FOUND in str(error) and method not in self.missing_methods:
                self.missing_methods.add(method)
                self.log(f"soak: the nodes have no admin method `{method}`; its figures are "
                         "recorded as null")
            return None

    async def measured(self, action: Callable[[], Awaitable[object]], timeout_s: float,
                       lock: trio.Lock | None = None) -> tuple[float, float, str | None]:
        if lock is None:
            started = self.now()
            error = await timed(action, timeout_s)
            return started, self.now(), error
        async with lock:
            started = self.now()
            error = await timed(action, timeout_s)
            return started, self.now(), error

    def log_command(self, result: CommandResult) -> None:
        self.commands_log.write(json.dumps(result.to_json()) + "\n")
        self.commands_log.flush()

    def finish(self, result: CommandResult, rerun: Rerun) -> None:
        self.log_command(result)
        failure = self.record.add_command(result)
        if failure is None:
            return
        if failure.explained_by is None:
            # Kept a while: a crash seen a moment later may yet explain it (record.add_crash).
            self.reruns[failure.number] = rerun
            while len(self.reruns) > RERUNS_KEPT_MAX:
                del self.reruns[next(iter(self.reruns))]
            self.unexplained_logged += 1
            if self.unexplained_logged <= UNEXPLAINED_LOGGED_MAX:
                self.log(f"soak t={result.ended_s:.0f}s UNEXPLAINED {result.family} "
                         f"{result.kind} on node{result.node}: {result.error}")
            return
        # A full queue leaves it "pending", then "not_retried": the queue bound says why.
        with contextlib.suppress(trio.WouldBlock):
            self.retry_send.send_nowait((failure, rerun))

    async def wallet(self, source: str, kind: str, node: int, patient_index: int | None) -> None:
        patient = self.patients[patient_index] if patient_index is not None else None
        identity = patient.identity if patient is not None else Identity.generate()
        number = next(self.numbers)
        address = self.nodes.wallet_addresses[node]

        async def rerun() -> tuple[float, float, str | None]:
            return await self.measured(
                lambda: wallet_command(kind, identity, address, patient, number,
                                       self.nodes.genesis),
                COMMAND_TIMEOUT_S, patient.lock if patient is not None else None)

        started, ended, error = await rerun()
        self.finish(CommandResult("wallet", source, kind, node, started, ended, error), rerun)

    async def admin_command(self, source: str, method: str, params: dict[str, Any],
                            node: int) -> None:
        async def rerun() -> tuple[float, float, str | None]:
            return await self.measured(lambda: self.admin(node, method, params),
                                       ADMIN_TIMEOUT_S + 1)

        started, ended, error = await rerun()
        self.finish(CommandResult("admin", source, method, node, started, ended, error), rerun)

    def usable(self, node: int) -> bool:
        """Running, not paused, not being restarted: a node whose answers mean something."""
        return (self.nodes.alive(node) and node not in self.nodes.paused
                and node not in self.restarting)

    # --- wallets -----------------------------------------------------------------------------

    async def wallets_in_a_row(self) -> None:
        """The steady load. A node the nemesis has paused is passed over, as a wallet given
        several nodes falls back to another: otherwise every fourth command would wait out its
        dial timeout and the load would all but stop during a pause. (Bursts and hang-ups still
        go to paused nodes, and commands under way when a pause begins fail under it.)"""
        for number in itertools.count():
            patient_index = number % PATIENTS
            kind = plan.row_command_kind(number, bool(self.patients[patient_index].records))
            node = plan.row_node(number, self.nodes.count)
            for _ in range(self.nodes.count):
                if node not in self.nodes.paused:
                    break
                node = (node + 1) % self.nodes.count
            await self.wallet("row", kind, node, patient_index)
            await trio.sleep(plan.ROW_PAUSE_S)

    async def bursts(self) -> None:
        rng = self.rng("bursts")
        for burst in itertools.count():
            await trio.sleep(rng.uniform(*plan.BURST_EVERY_S))
            node = burst % self.nodes.count
            async with trio.open_nursery() as nursery:
                for index in range(self.options.wallets_at_once):
                    nursery.start_soon(self.wallet, "burst", plan.burst_command_kind(index),
                                       node, None)

    async def hangups(self) -> None:
        rng = self.rng("hangups")
        while True:
            await trio.sleep(rng.uniform(*plan.HANGUP_EVERY_S))
            kind = rng.choice(plan.WALLET_HANGUPS)
            address = self.nodes.wallet_addresses[rng.randrange(self.nodes.count)]
            error = await timed(functools.partial(wallet_hangup, kind, address),
                                HANGUP_TIMEOUT_S)
            self.record.add_hangup("wallet", kind, "done" if error is None else "failed")
            kind = rng.choice(plan.TCP_HANGUPS)
            host, port = self.nodes.p2p_endpoints[rng.randrange(self.nodes.count)]
            error = await timed(functools.partial(
                tcp_hangup, kind, host, port, rng.randbytes(64), rng.uniform(*plan.TCP_STALL_S)),
                HANGUP_TIMEOUT_S)
            self.record.add_hangup("tcp", kind, "done" if error is None else "failed")

    async def retrier(self, receive: trio.MemoryReceiveChannel[tuple[Failure, Rerun]]) -> None:
        async for failure, rerun in receive:
            node = failure.command.node
            again = True
            while again:
                while not node_quiet(self.record.windows, node, self.now()):
                    await trio.sleep(QUIET_POLL_S)
                started, ended, error = await rerun()
                previous = failure.retries[-1] if failure.retries else failure.command
                attempt = previous.retried(started, ended, error)
                self.log_command(attempt)
                self.record.add_command(attempt)
                again = self.record.add_retry(failure, attempt)
            if failure.retry_outcome == "failed":
                self.log(f"soak t={self.now():.0f}s RETRY FAILED {failure.command.kind} on "
                         f"node{node} (first: {failure.command.error}; retry: {error})")

    # --- admin -------------------------------------------------------------------------------

    async def admin_load(self) -> None:
        rng = self.rng("admin")
        while True:
            await trio.sleep(rng.uniform(*plan.ADMIN_EVERY_S))
            node = rng.randrange(self.nodes.count)
            method, params = plan.admin_read(rng, self.heights[node])
            if self.usable(node):
                await self.admin_command("admin", method, params, node)

    async def hostile_admin(self) -> None:
        rng = self.rng("hostile")
        while True:
            await trio.sleep(rng.uniform(*plan.HOSTILE_EVERY_S))
            case = plan.next_hostile(rng)
            node = rng.randrange(self.nodes.count)
            hold_s = rng.uniform(*plan.HALF_LINE_HOLD_S)
            if not self.usable(node):
                continue
            await self.send_hostile(case, node, hold_s)

    async def send_hostile(self, case: plan.HostileCase, node: int, hold_s: float) -> None:
        process = self.nodes.processes[node]
        path = self.nodes.admin_sockets[node]
        sent_s = self.now()
        self.record.hostile_sent(node, case.name, sent_s)
        event: dict[str, Any] = {"t_s": sent_s, "node": node, "case": case.name}
        if case.hold:
            async def status_meanwhile() -> None:
                await trio.sleep(1.0)
                await self.admin_command("half_line_check", "status", {}, node)

            raw = await hold_half_line(path, case.line, hold_s, status_meanwhile)
            event["held_s"] = round(hold_s, 1)
            event["answer"] = "held" if raw is None else judge_answer(raw)
        else:
            raw = await admin_exchange(path, case.line, HOSTILE_ANSWER_TIMEOUT_S)
            event["answer"] = judge_answer(raw)
        event["answer_text"] = (raw or b"")[:200].decode(errors="replace")
        await trio.sleep(HOSTILE_SETTLE_S)
        # The same process, still running: a crash and a quick restart must not look alive.
        event["node_lived"] = (process is not None and self.nodes.processes[node] is process
                               and process.poll() is None)
        self.record.add_hostile(event, expects_error=not case.hold)
        if not event["node_lived"]:
            self.log(f"soak t={self.now():.0f}s hostile `{case.name}` KILLED node{node}")

    # --- the nemesis -------------------------------------------------------------------------

    async def nemesis(self) -> None:
        rng = self.rng("nemesis")
        while True:
            await trio.sleep(plan.fault_gap_s(rng, self.options.nemesis_every_s))
            fault = plan.next_soak_fault(rng, self.nodes.count)
            event: dict[str, Any] = {"kind": fault.kind, "nodes": list(fault.nodes),
                                     "start_s": self.now(), "applied": False}
            if not all(self.usable(node) for node in fault.nodes):
                event["error"] = "a node of the fault is down or restarting"
                self.record.add_fault(event)
                continue
            self.log(f"soak t={self.now():.0f}s nemesis {fault.describe()}")
            if fault.kind == "pause":
                await self.pause(fault.nodes[0], fault.duration_s, event)
            else:
                await self.cut_link(fault.nodes[0], fault.nodes[1], event)

    async def pause(self, node: int, duration_s: float, event: dict[str, Any]) -> None:
        window = self.record.open_window("pause", (node,), self.now())
        self.nodes.pause(node)
        event["applied"] = True
        try:
            await trio.sleep(duration_s)
        finally:
            self.nodes.resume(node)  # also when the run ends during the pause
            event["end_s"] = self.now()
            self.record.close_window(window, event["end_s"])
            self.record.add_fault(event)

    async def cut_link(self, node: int, peer: int, event: dict[str, Any]) -> None:
        peer_hex = self.nodes.public_keys[peer].hex()
        node_hex = self.nodes.public_keys[node].hex()
        window = self.record.open_window("link_cut", (node, peer), self.now())
        try:
            try:
                ups_before = link_ups(await self.admin(node, "peers", {}), peer_hex)
                await self.admin(node, "peer_disconnect", {"peer": peer_hex})
            except AdminError as error:
                event["error"] = str(error)[:200]
                if METHOD_NOT_FOUND in str(error) and "peer_disconnect" not in self.missing_methods:
                    self.missing_methods.add("peer_disconnect")
                    self.log("soak: the nodes have no admin method `peer_disconnect`; link cuts "
                             "are recorded as not applied")
                return
            event["applied"] = True
            event["seen_down"] = False
            with trio.move_on_after(LINK_HEAL_TIMEOUT_S):
                while True:
                    await trio.sleep(LINK_POLL_S)
                    try:
                        up = (link_up(await self.admin(node, "peers", {}), peer_hex, ups_before)
                              and link_up(await self.admin(peer, "peers", {}), node_hex))
                    except AdminError:
                        up = False
                    if not up:
                        event["seen_down"] = True
                        continue
                    event["healed_after_s"] = round(self.now() - event["start_s"], 2)
                    break
            if "healed_after_s" not in event:
                self.log(f"soak t={self.now():.0f}s link node{node}-node{peer} NOT healed "
                         f"within {LINK_HEAL_TIMEOUT_S:.0f} s")
        finally:
            event["end_s"] = self.now()
            self.record.close_window(window, event["end_s"])
            self.record.add_fault(event)

    # --- crashes -----------------------------------------------------------------------------

    async def supervise(self, nursery: trio.Nursery) -> None:
        while True:
            await trio.sleep(SUPERVISE_EVERY_S)
            for node in range(self.nodes.count):
                process = self.nodes.processes[node]
                if node in self.restarting or process is None or process.poll() is None:
                    continue
                crash, window, explained = self.record.add_crash(
                    node, self.now(), process.returncode, self.nodes.log_tail(node))
                how = f"exit {process.returncode}"
                if crash["stop_signal"]:
                    how += f", a clean stop on {crash['stop_signal']} from outside the soak"
                if crash["after_hostile"]:
                    how += f", after hostile `{crash['after_hostile']}`"
                self.log(f"soak t={self.now():.0f}s node{node} CRASHED ({how}); "
                         f"{len(explained)} earlier failures explained by it; starting it again")
                for failure in explained:
                    rerun = self.reruns.pop(failure.number, None)
                    if rerun is not None:
                        with contextlib.suppress(trio.WouldBlock):
                            self.retry_send.send_nowait((failure, rerun))
                self.restarting.add(node)
                nursery.start_soon(self.restart, node, window)

    async def restart(self, node: int, window: int) -> None:
        self.restarts[node] += 1
        if self.restarts[node] > RESTARTS_MAX:
            self.log(f"soak: node{node} crashed {RESTARTS_MAX} times; left down")
            return  # stays in `restarting`, its window open: everything on it is explained
        await trio.sleep(RESTART_DELAY_S)
        self.nodes.start(node)
        deadline = trio.current_time() + READY_TIMEOUT_S
        while trio.current_time() < deadline and self.nodes.alive(node):
            try:
                await self.admin(node, "status", {}, timeout_s=1.0)
                break
            except AdminError:
                await trio.sleep(0.2)
        self.record.close_window(window, self.now())
        self.restarting.discard(node)

    # --- samples -----------------------------------------------------------------------------

    async def sampler(self) -> None:
        while True:
            next_at = trio.current_time() + self.options.interval_s
            await self.sample()
            await trio.sleep_until(next_at)

    async def sample(self) -> None:
        t_s = self.now()
        samples: list[dict[str, Any]] = [{} for _ in range(self.nodes.count)]

        async def one(node: int) -> None:
            pid = self.nodes.pid(node)
            rss_kib, rss_anon_kib, fds = proc_figures(pid) if pid is not None else (
                None, None, None)
            status = connections = None
            if self.usable(node):
                status = await self.optional_admin(node, "status")
                connections = await self.optional_admin(node, "connections")
            samples[node] = node_sample(node, alive=pid is not None,
                                        paused=node in self.nodes.paused, rss_kib=rss_kib,
                                        fds=fds, status=status, connections=connections,
                                        rss_anon_kib=rss_anon_kib)

        async with trio.open_nursery() as nursery:
            for node in range(self.nodes.count):
                nursery.start_soon(one, node)
        own_rss_kib, _, own_fds = proc_figures(os.getpid())
        interval = self.record.add_interval(t_s, samples,
                                            {"rss_kib": own_rss_kib, "fds": own_fds})
        wallet = interval["wallet"]
        figures = " ".join(
            f"n{s['node']}:{(s['rss_kib'] or 0) // 1024}MiB/{s['fds']}fd/{s['tasks']}t"
            for s in samples)
        self.log(f"soak t={t_s:.0f}s {figures} wallet {wallet['ok']}/{wallet['count']} ok "
                 f"p50 {wallet['p50_ms']} ms p99 {wallet['p99_ms']} ms")
        write_json_atomically(self.options.out / "soak.json", self.record.to_json())


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(partial, path)
