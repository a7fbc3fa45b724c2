"""The history of a nemesis run: one JSON object per line, appended and flushed as it happens, so a
run that dies half-way still leaves a history the checker can read.

Event kinds (`type`):
    invoke    {op, node, tx_hash, t}               a client is about to submit tx_hash to node
    ok        {op, node, tx_hash, height, t}       final on that node at height: acknowledged
    fail      {op, node, tx_hash, error, definite, t}
              definite: the node refused it (it will never be committed through this submission);
              otherwise (unreachable, timeout) the outcome is unknown
    nemesis   {fault, nodes, phase: "start"|"heal", t}
    recovery  {after, seconds, t}                   a fresh tx final on every node after a heal
    crash     {node, t}                             a node exited that the nemesis had not
                                                    stopped; the runner starts it again, as a
                                                    supervisor (systemd, compose restart) would
`t` is seconds since the start of the run (monotonic clock).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, TextIO

EVENT_TYPES: Final = ("invoke", "ok", "fail", "nemesis", "recovery", "crash")
HISTORY_LINE_BYTES_MAX: Final = 64 * 1024  # an event is a few hundred bytes; more is not ours


class HistoryWriter:
    """Appends events from several threads; each line is written and flushed under one lock."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._file: TextIO = path.open("a", encoding="utf-8")

    def write(self, event: dict[str, Any]) -> None:
        assert event.get("type") in EVENT_TYPES, event
        line = json.dumps(event, sort_keys=True)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_history(path: Path) -> Iterator[dict[str, Any]]:
    """The events of a history file. A torn last line (the writer was killed) is skipped."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if len(line) > HISTORY_LINE_BYTES_MAX:
                raise ValueError(f"{path}:{number}: line longer than {HISTORY_LINE_BYTES_MAX}")
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                if line.endswith("\n"):
                    raise ValueError(f"{path}:{number}: not JSON") from None
                return
            if not isinstance(event, dict) or event.get("type") not in EVENT_TYPES:
                raise ValueError(f"{path}:{number}: not a history event")
            yield event
