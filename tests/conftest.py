"""Options of the test suite (defaults keep the suite fast; CI may raise them)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--crash-cycles", type=int, default=20,
        help="SIGKILL cycles of the store crash-consistency test (default 20; try 1000)")
