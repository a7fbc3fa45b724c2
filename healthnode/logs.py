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

Pseudonyms: a log names no record, grant or transaction of a patient and no patient's or
provider's key (docs/operations.md, "What the logs hold about patients"). Where an operator needs
to see that two lines are about the same one, a line carries `pseudonym(value)`: keyed BLAKE2b of
the value under this node's salt (`use_pseudonym_salt`; the node keeps it in its home), cut to
12 hex digits. The same value has the same pseudonym in every line of one node's log (until a
restore, which makes a new salt), and without the salt a pseudonym says nothing about its value,
not even to someone who holds the chain and tries each of its ids. Free text that a line quotes
from elsewhere (an error's message, a traceback, a record of libp2p) may name anything: `scrub`
replaces whatever in it is shaped like an id (16 or more hex digits, a libp2p peer id, a bytes
literal) by `~` and its pseudonym, on every event, before it is written. Node keys and peer ids
of the authorities (hospitals, public on chain and in every config) may stay in the fields that
name peers.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TextIO

import nacl.utils
import structlog

from healthnode import crypto

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


PSEUDONYM_SALT_BYTES: Final = 32
# 48 bits: among 10,000 values of one node, two share a pseudonym with odds of about 2 in 10^7.
PSEUDONYM_HEX_CHARS: Final = 12


def pseudonym_with(salt: bytes, value: bytes) -> str:
    """`value` as a log line may name it: keyed BLAKE2b under `salt`, cut to 12 hex digits."""
    return crypto.keyed_digest(salt, value)[:PSEUDONYM_HEX_CHARS // 2].hex()


@dataclass(slots=True)
class _Salt:
    value: bytes


# Until a node hands in the salt of its home, a process's own: pseudonyms that hold for the
# process only, and never a value in clear.
_SALT: Final = _Salt(nacl.utils.random(PSEUDONYM_SALT_BYTES))


def use_pseudonym_salt(salt: bytes) -> None:
    if len(salt) != PSEUDONYM_SALT_BYTES:
        raise ValueError(f"a pseudonym salt is {PSEUDONYM_SALT_BYTES} bytes, got {len(salt)}")
    _SALT.value = salt


def pseudonym(value: bytes) -> str:
    """`value` (a key, a record id) under this process's salt: see the module docstring."""
    return pseudonym_with(_SALT.value, value)


# A run of 16 hex digits or more, a peer id (base58, 40 characters or more: the Ed25519 kind is
# 52), or a bytes literal (closed, or cut off at the end of a clipped message).
_ID_SHAPED: Final = re.compile(
    r"(?P<hex>[0-9a-fA-F]{16,})"
    r"|(?P<peer>[1-9A-HJ-NP-Za-km-z]{40,})"
    r"|(?P<literal>\bb(?P<quote>['\"])(?:\\.|(?!(?P=quote)).)*(?:(?P=quote)|$))")
_FREE_TEXT: Final = ("error", "detail", "reason", "traceback", "exception")
_RECORD_FIELDS: Final = ("exc_info", "stack_info")  # a foreign record's, formatted later


def _pseudonym_of_match(match: re.Match[str]) -> str:
    text = match.group()
    value = text.encode()
    if match.group("peer") is not None:
        with contextlib.suppress(ValueError):  # base58, but no peer id
            value = crypto.public_key_from_peer_id(text)
    elif match.group("hex") is not None and len(text) % 2 == 0:
        value = bytes.fromhex(text)
    return "~" + pseudonym(value)


def scrub(text: str) -> str:
    """`text` with each id-shaped part replaced by `~` and its pseudonym: a key or a record id
    gets the same pseudonym as in the fields that name it."""
    return _ID_SHAPED.sub(_pseudonym_of_match, text)


def scrub_free_text(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for name in _FREE_TEXT:
        value = event_dict.get(name)
        if isinstance(value, str):
            event_dict[name] = scrub(value)
    return event_dict


def _scrub_foreign_record(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A foreign record's message and `extra=` fields are all free text (our events are fixed
    names with fields that we chose)."""
    for name, value in event_dict.items():
        if name.startswith("_") or name in _RECORD_FIELDS or value is None \
                or isinstance(value, bool | int | float):
            continue
        event_dict[name] = scrub(value if isinstance(value, str) else str(value))
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
    structlog.processors.format_exc_info,  # as text, which scrub_free_text can read
    scrub_free_text,
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
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), _scrub_foreign_record,
                           *_SHARED_PROCESSORS],
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


def log_uncaught(kind: type[BaseException], error: BaseException,
                 trace: TracebackType | None) -> None:
    """`sys.excepthook` for a node: an exception that stops the process is logged as one event,
    its traceback scrubbed like any other, instead of printed raw to stderr (the node's log)."""
    get_logger("healthnode").critical("uncaught_exception", error=kind.__name__,
                                      exc_info=(kind, error, trace))
