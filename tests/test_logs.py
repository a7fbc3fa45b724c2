"""Logging: JSON lines, foreign loggers routed in, and fields named like secrets refused."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from healthnode import logs


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
