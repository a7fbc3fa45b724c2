"""Logging: structlog events, JSON lines by default, a console renderer on a terminal.

Log events are fixed snake_case names with fields (`log.info("block_committed", height=7)`).
Everything goes through one stdlib handler, so libraries that log through the standard `logging`
module (py-libp2p, whose loggers write to stderr with propagate=False) come out in the same format
once `route_foreign_loggers()` has pulled them in.

Privacy: `refuse_secret_fields` runs on every event, ours and foreign. A field whose name looks like
a secret or a record's content (seed, passphrase, private key, plaintext, note, ...) is dropped and
its name listed under `redacted`, so a careless `log.info(..., plaintext=...)` can never put a
patient's data or key in a log file. Names that only describe such a thing (`content_hash`,
`note_bytes`) are allowed.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final, TextIO

import structlog

_SECRET_NAME: Final = re.compile(
    r"secret|seed|passphrase|password|private|plaintext|cleartext|content|data_key|signing_key"
    r"|sealed_key|note|mnemonic|record_body|fhir",
    re.IGNORECASE,
)
# Suffixes that make a name describe, not contain, the sensitive thing.
_DESCRIPTIVE_SUFFIXES: Final = ("_hash", "_bytes", "_len", "_id", "_count", "_size")
_STRUCTLOG_KEYS: Final = frozenset({"event", "level", "timestamp", "logger", "redacted"})


def is_secret_field(name: str) -> bool:
    if name in _STRUCTLOG_KEYS or name.endswith(_DESCRIPTIVE_SUFFIXES):
        return False
    return bool(_SECRET_NAME.search(name))


def refuse_secret_fields(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    redacted = sorted(name for name in event_dict if is_secret_field(name))
    for name in redacted:
        del event_dict[name]
    if redacted:
        event_dict["redacted"] = redacted
    return event_dict


def _bytes_to_hex(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if isinstance(value, bytes):
            event_dict[key] = value.hex()
    return event_dict


_SHARED_PROCESSORS: Final[list[Any]] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    refuse_secret_fields,
    _bytes_to_hex,
]

_HANDLER_NAME: Final = "healthnode"


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Send structlog and stdlib logging to `stream` (stderr) as JSON lines or console text."""
    stream = stream if stream is not None else sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=True)
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # ExtraAdder lifts `extra=` fields of foreign records, so they meet the secret filter too.
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *_SHARED_PROCESSORS],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setLevel(level.upper())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    route_foreign_loggers()


# Libraries known to install their own stderr handlers with propagate=False.
FOREIGN_LOGGER_PREFIXES: Final = ("libp2p", "multiaddr", "trio_websocket")


def route_foreign_loggers(prefixes: tuple[str, ...] = FOREIGN_LOGGER_PREFIXES) -> int:
    """Make every existing logger under `prefixes` propagate to our handler instead of writing
    on its own. Call again after importing such a library. Returns how many were rerouted."""
    rerouted = 0
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or not name.startswith(prefixes):
            continue
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        rerouted += 1
    return rerouted


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)
