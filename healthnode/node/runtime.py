"""What the node asks of its process and its machine: open files, live trio tasks, glibc's
malloc, and libp2p's own log records counted as rejected input."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

import trio

MALLOC_ARENAS_MAX: Final = 2  # glibc's default is 8 per core: one per thread that allocates


def open_fds() -> int:
    """File descriptors this process holds open (Linux: /proc/self/fd)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018  (glibc only)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC: Final = _glibc()
_M_ARENA_MAX: Final = -8  # glibc's mallopt parameter


def limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS_MAX malloc arenas (glibc). LevelDB's compaction thread and trio's
    worker threads each get an arena of their own by default, and freed memory in one arena is
    not reused by another: in a soak this showed as RSS that grew for hours with no live data
    behind it (docs/reliability.md)."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_ARENA_MAX, MALLOC_ARENAS_MAX)


def release_free_memory() -> float:
    """Collect cyclic garbage of every generation, then hand free heap pages back to the system
    (glibc `malloc_trim`); the seconds it took. A connection's objects form reference cycles
    (yamux and its streams, the swarm's connection and its muxer), which Python frees only in a
    collection of the oldest generation; under steady load those run rarely, so garbage piled up
    and showed as RSS that grew for hours (docs/reliability.md)."""
    started = time.perf_counter()
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    return time.perf_counter() - started


def trio_tasks() -> int:
    """Trio tasks alive in this process, counted from the root task down."""
    root = trio.lowlevel.current_root_task()
    count, stack = 0, [] if root is None else [root]
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


class _CountingHandler(logging.Handler):
    """Counts libp2p's warnings and errors as rejected input, by level (a bounded label)."""

    def __init__(self, count: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._count = count

    def emit(self, record: logging.LogRecord) -> None:
        self._count(f"libp2p_{record.levelname.lower()}")


@contextmanager
def counting_libp2p_warnings(count: Callable[[str], None]) -> Iterator[None]:
    """While inside, each warning or error that libp2p logs is `count`ed. Garbage below our
    protocols (a broken Noise or multistream handshake, a bad yamux frame) is handled and logged
    by libp2p itself; this counts it too."""
    handler = _CountingHandler(count)
    logging.getLogger("libp2p").addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger("libp2p").removeHandler(handler)
