"""Ports and programs for the servers the tests start."""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def required_binary(*names: str, package: str, tests: str) -> str:
    """The path of the first of ``names`` installed. Without any, the test is skipped with the
    reason, or fails under ``CI=true``: CI must run ``tests``."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    message = f"{names[0]} is not installed (Debian: apt-get install {package})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}: CI must run the {tests}")
    pytest.skip(message)
