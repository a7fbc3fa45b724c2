"""The wall clock, read in one place. The core never reads a clock (docs/architecture.md, rule
3): the shell stamps each event and each request with `now_ms()` and hands the time in."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch, from the system's wall clock."""
    return time.time_ns() // 1_000_000
