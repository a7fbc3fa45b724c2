"""The node's snapshots: every `[node] snapshot_interval` heights, the state as committed at that
height is written as a snapshot (store/leveldb.py `write_snapshot`, ledger/snapshot.py), for the
nodes that join by state sync and for `verify` on a node that prunes.

The store is pinned (a LevelDB snapshot) in the commit hook, before the next block can change it,
and the copy runs in a worker thread while the node goes on. One snapshot is written at a time:
a height that comes while the last one is still being written is skipped (a node catching up by
block sync commits many heights a second). A snapshot that fails is logged and the node goes on;
one under way when the node stops ends at its next batch of writes (the node does not wait
minutes for it), and an unfinished one is deleted when the store next opens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from healthnode import logs
from healthnode.errors import StoreError
from healthnode.protocol.block import Block
from healthnode.store.leveldb import ChainStore

log = logs.get_logger("healthnode.snapshots")



class SnapshotTaker:
    def __init__(self, store: ChainStore, interval: int, keep: int,
                 start: Callable[[Callable[..., Awaitable[None]], Any], None]) -> None:
        self.store = store
        self.interval = interval
        self.keep = keep
        self._start = start
        self.writing: int | None = None  # the height being written
        self.written = 0

    def block_committed(self, block: Block) -> None:
        if not self.interval or block.height % self.interval or self.writing is not None:
            return
        self.writing = block.height
        self._start(self._write, self.store.pin())

    async def _write(self, pinned: Any) -> None:
        height, started = self.writing, time.monotonic()
        stop = threading.Event()

        async def stop_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                stop.set()  # the node stops: the copy ends at its next batch, left unfinished

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_when_cancelled)
                manifest = await trio.to_thread.run_sync(self.store.write_snapshot, pinned,
                                                         self.keep, stop.is_set)
                nursery.cancel_scope.cancel()
        except StoreError as error:
            log.error("snapshot_failed", height=height, error=str(error)[:200])
            return
        finally:
            pinned.close()
            self.writing = None
        if manifest is None:
            return
        self.written += 1
        log.info("snapshot_written", height=height, chunks=len(manifest.roots),
                 seconds=round(time.monotonic() - started, 3))
