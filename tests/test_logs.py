"""Logging: JSON lines, foreign loggers routed in, fields named like secrets refused, and ids
in free text replaced by their pseudonyms."""

from __future__ import annotations

import io
import json
import logging
import traceback
from collections.abc import Iterator

import pytest

from healthnode import crypto, logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure_logging("debug", "json", stream)
    yield stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == "healthnode":
            root.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_events_are_json_lines_with_fields(captured: io.StringIO) -> None:
    logs.get_logger("healthnode.test").info("block_committed", height=7, block_hash=b"\x01\x02")
    [event] = lines(captured)
    assert event["event"] == "block_committed"
    assert event["height"] == 7
    assert event["block_hash"] == "0102"
    assert event["level"] == "info"


@pytest.mark.parametrize("name", ["plaintext", "seed", "passphrase", "private_key", "note",
                                  "record_content", "data_key", "signing_key", "fhir_bundle"])
def test_fields_named_like_secrets_are_refused(captured: io.StringIO, name: str) -> None:
    logs.get_logger("healthnode.test").info("oops", **{name: "Jane Doe, HIV positive"})
    [event] = lines(captured)
    assert "Jane Doe" not in captured.getvalue()
    assert event["redacted"] == [name]


@pytest.mark.parametrize("name", ["content_hash", "note_bytes", "record_id", "public_key"])
def test_descriptive_names_are_allowed(captured: io.StringIO, name: str) -> None:
    logs.get_logger("healthnode.test").info("fine", **{name: "abc"})
    [event] = lines(captured)
    assert event[name] == "abc"


def test_libp2p_style_loggers_are_routed_into_structlog(captured: io.StringIO) -> None:
    foreign = logging.getLogger("libp2p.fake_swarm")
    own_stream = io.StringIO()
    foreign.addHandler(logging.StreamHandler(own_stream))
    foreign.propagate = False
    assert logs.route_foreign_loggers() >= 1
    foreign.warning("dial failed to %s", "peer")
    [event] = lines(captured)
    assert event["event"] == "dial failed to peer"
    assert event["logger"] == "libp2p.fake_swarm"
    assert own_stream.getvalue() == ""


def test_foreign_records_also_pass_the_secret_filter(captured: io.StringIO) -> None:
    logging.getLogger("libp2p.other").warning("x", extra={"passphrase": "hunter22", "peer": "p1"})
    [event] = lines(captured)
    assert "hunter22" not in captured.getvalue()
    assert event["peer"] == "p1"
    assert event["redacted"] == ["passphrase"]


# --- pseudonyms -------------------------------------------------------------------------------


def test_a_pseudonym_is_stable_under_one_salt_and_differs_under_another() -> None:
    salt, other = b"\x01" * 32, b"\x02" * 32
    record_id = bytes(range(32))
    first = logs.pseudonym_with(salt, record_id)
    assert first == logs.pseudonym_with(salt, record_id)
    assert len(first) == logs.PSEUDONYM_HEX_CHARS and int(first, 16) >= 0
    assert first != logs.pseudonym_with(other, record_id)
    assert first != logs.pseudonym_with(salt, record_id[:-1] + b"\x00")
    assert first not in record_id.hex()


def test_the_salt_handed_in_is_the_one_pseudonyms_use() -> None:
    logs.use_pseudonym_salt(b"\x03" * 32)
    assert logs.pseudonym(b"key") == logs.pseudonym_with(b"\x03" * 32, b"key")
    with pytest.raises(ValueError, match="32 bytes"):
        logs.use_pseudonym_salt(b"short")


def test_scrub_replaces_ids_in_free_text_by_their_pseudonyms() -> None:
    key = bytes(range(32))
    peer = crypto.peer_id(key)
    text = (f"closing {peer}; KeyError(b'\\x01\\x02'); record {key.hex()} "
            f"(prefix {key.hex()[:16]}); b'cut off")
    scrubbed = logs.scrub(text)
    assert peer not in scrubbed and key.hex()[:16] not in scrubbed
    assert "\\x01" not in scrubbed and "cut off" not in scrubbed
    # A key gets one pseudonym, as a peer id or in hex, and the one a field would carry.
    assert scrubbed.count("~" + logs.pseudonym(key)) == 2
    kept = "height 1795639146630, port 26656, /ip4/127.0.0.1/tcp/0, block_committed"
    assert logs.scrub(kept) == kept


def test_errors_tracebacks_and_foreign_messages_are_scrubbed(captured: io.StringIO) -> None:
    record_id = bytes(range(32))
    try:
        raise KeyError(record_id)
    except KeyError as error:
        logs.get_logger("healthnode.test").error("bug", error=f"no {record_id.hex()}",
                                                 traceback="".join(
                                                     traceback.format_exception(error)))
        logging.getLogger("libp2p.swarm").exception(
            "closing %s", crypto.peer_id(record_id))
    assert record_id.hex()[:16] not in captured.getvalue()
    assert crypto.peer_id(record_id) not in captured.getvalue()
    assert repr(record_id)[2:18] not in captured.getvalue()
    ours, foreign = lines(captured)
    assert ours["error"] == f"no ~{logs.pseudonym(record_id)}"
    assert 'raise KeyError(record_id)' in str(ours["traceback"])
    assert foreign["event"] == f"closing ~{logs.pseudonym(record_id)}"
    assert "Traceback" in str(foreign["exception"])


def test_block_hashes_and_authority_peers_in_their_own_fields_are_kept(
        captured: io.StringIO) -> None:
    logs.get_logger("healthnode.test").info("block_committed", block_hash="ab" * 8,
                                            peer="cd" * 8)
    [event] = lines(captured)
    assert event["block_hash"] == "ab" * 8 and event["peer"] == "cd" * 8


def test_an_uncaught_exception_is_one_scrubbed_event(captured: io.StringIO) -> None:
    secret = bytes(range(32)).hex()
    try:
        raise RuntimeError(f"store damaged at {secret}")
    except RuntimeError as error:
        logs.log_uncaught(RuntimeError, error, error.__traceback__)
    [event] = lines(captured)
    assert event["event"] == "uncaught_exception" and event["level"] == "critical"
    assert event["error"] == "RuntimeError" and secret[:16] not in captured.getvalue()
    assert "store damaged at ~" in str(event["exception"])
