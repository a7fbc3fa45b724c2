"""`healthnode run`: start one node from its home and stop it cleanly on SIGTERM or Ctrl-C.

Before anything of the home is read, the home is checked to be its user's alone (home/modes.py),
a new key staged for a rotation that is now in force takes the key file's place
(node/rotation.py), and the node key is then read once from where the options say
(home/node_key.py)."""

from __future__ import annotations

import gc
import signal
import sys
from pathlib import Path

import trio

from healthnode import logs
from healthnode.errors import HealthnodeError
from healthnode.home.config import LOG_SALT_FILE
from healthnode.home.keys import load_or_create_log_salt
from healthnode.home.modes import check_home
from healthnode.home.node_key import KeySource, load_node_key
from healthnode.node.daemon import Node
from healthnode.node.rotation import take_up_staged_key

log = logs.get_logger("healthnode.run")


async def run_until_signalled(node: Node) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)

            async def stop_on_signal() -> None:
                async for received in signals:
                    log.info("node_stopping", signal=signal.Signals(received).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)


def run_node(home: Path, key_source: KeySource | None = None) -> int:
    check_home(home)
    taken_up = take_up_staged_key(home)
    identity = load_node_key(home, key_source or KeySource())
    node = Node(home, identity=identity)
    logs.configure_logging(node.config.log.level, node.config.log.format)
    logs.use_pseudonym_salt(load_or_create_log_salt(home / LOG_SALT_FILE))
    if taken_up is not None:
        log.info("node_key_taken_up", new_key=taken_up.new_key.hex()[:16],
                 from_height=taken_up.height)
    sys.excepthook = logs.log_uncaught
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        trio.run(run_until_signalled, node)
    except BaseExceptionGroup as group:
        # Startup refusals (store in use, port taken) are one-line errors, not tracebacks.
        failures = group.subgroup(HealthnodeError)
        if failures is None:
            raise
        first: BaseException = failures
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    log.info("node_stopped")
    return 0
