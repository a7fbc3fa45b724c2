"""Options of the test suite (defaults keep the suite fast; CI may raise them)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--crash-cycles", type=int, default=20,
        help="SIGKILL cycles of the store crash-consistency test (default 20; try 1000)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `slow` run only when asked for with `-m slow` (they take minutes)."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="minutes long: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
