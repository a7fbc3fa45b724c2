"""Time, read in one place and handed to whoever needs it.

The core never reads a clock (docs/architecture.md, rule 3): the shell stamps each event and
each request with the time and hands it in. The shell itself has two kinds of time, and each has
one source:

- **Durations and deadlines** (timeouts, pings, idle connections, latency figures) come from
  trio's clock: `trio.current_time()`, `trio.sleep`, `trio.move_on_after`. One exception: the
  liveness probe (node/health.Probes) is a watchdog of the loop itself, answered from another
  thread, so it reads the operating system's monotonic clock.
- **The wall clock** (block times, expiries, upload deadlines, the core's events) comes from the
  `Clock` that the node is built with: `SystemClock` in a running node, and `TrioClock` in a test
  that runs the node under trio's `MockClock`, where wall time must move with trio's virtual time
  (tests/test_mock_network.py runs a whole network so).

The wallet and the home tools, which run once and exit, read `now_ms()`: the system's clock.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...


def now_ms() -> int:
    """Milliseconds since the Unix epoch, from the system's wall clock."""
    return time.time_ns() // 1_000_000


class SystemClock:
    """The system's wall clock: a running node's."""

    def now_ms(self) -> int:
        return now_ms()


class TrioClock:
    """Wall time that moves with trio's clock (virtual under `MockClock`): the epoch time
    `epoch_ms` at trio time 0. Call only from inside `trio.run`."""

    def __init__(self, epoch_ms: int) -> None:
        self.epoch_ms = epoch_ms

    def now_ms(self) -> int:
        return self.epoch_ms + int(trio.current_time() * 1000)
