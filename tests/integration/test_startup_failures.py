"""A gateway that cannot start says why in one line on stderr and exits 1: no traceback, no
"Unclosed client session", with one process and with workers under the supervisor."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, proxy_config

ROOT = Path(__file__).resolve().parents[2]


def config(target: str = "http://127.0.0.1:9", gateway: str = "") -> str:
    """One catch-all route to ``target``; ``gateway`` holds extra [gateway] settings."""
    return proxy_config(target, path="/{tail:.*}", gateway=gateway, upstream="")


@pytest.fixture(params=[[], ["--workers", "2"]], ids=["single", "workers"])
def workers(request: pytest.FixtureRequest) -> list[str]:
    """The gateway as one process, or as a supervisor of two workers."""
    return list(request.param)


@pytest.fixture
def occupied() -> Iterator[int]:
    """A port on 127.0.0.1 that a listening socket holds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def gateway_run(path: Path, *options: str, **popen: Any) -> subprocess.CompletedProcess[str]:
    """``gateway run PATH OPTIONS`` to its end, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "run", str(path), *options],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False, **popen,
    )


def run(tmp_path: Path, *options: str, toml: str | None = None, **popen: Any) -> subprocess.CompletedProcess[str]:
    """``gateway run`` with ``toml`` (by default ``config()``) written to tmp_path/routes.toml."""
    path = tmp_path / "routes.toml"
    path.write_text(textwrap.dedent(config() if toml is None else toml))
    return gateway_run(path, *options, **popen)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "Unclosed" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_public_port_in_use(tmp_path: Path, occupied: int, workers: list[str]) -> None:
    line = one_line(run(tmp_path, "--listen", f"127.0.0.1:{occupied}", "--admin-listen", "127.0.0.1:0", *workers))
    assert line == (f"gateway: cannot listen on 127.0.0.1:{occupied} (--listen): address already in use "
                    "(is another gateway or server running on that port?)")


def test_admin_port_in_use(tmp_path: Path, occupied: int, workers: list[str]) -> None:
    line = one_line(run(tmp_path, "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{occupied}",
                        *workers))
    assert line.startswith(f"gateway: cannot listen on 127.0.0.1:{occupied} (--admin-listen): address already in use")


def test_port_in_use_named_by_the_config(tmp_path: Path, occupied: int, workers: list[str]) -> None:
    toml = config(gateway=f'listen = "127.0.0.1:{occupied}"\nadmin_listen = "127.0.0.1:{free_port()}"')
    line = one_line(run(tmp_path, *workers, toml=toml))
    assert line.startswith(f"gateway: cannot listen on 127.0.0.1:{occupied} (gateway.listen): address already in use")


def test_an_address_this_host_does_not_have(tmp_path: Path, workers: list[str]) -> None:
    line = one_line(run(tmp_path, "--listen", "192.0.2.1:8080", "--admin-listen", "", *workers))
    assert line.startswith("gateway: cannot listen on 192.0.2.1:8080 (--listen): address not available")


_PR_CAPBSET_DROP = 24
_CAP_NET_BIND_SERVICE = 10


def _drop_net_bind_service() -> None:
    """In the child before exec: root without CAP_NET_BIND_SERVICE may not open low ports."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_CAPBSET_DROP, _CAP_NET_BIND_SERVICE, 0, 0, 0) != 0 and os.geteuid() == 0:
        os._exit(97)  # an ordinary user cannot drop it, and does not have it anyway


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux capabilities")
def test_permission_denied_on_a_low_port(tmp_path: Path, workers: list[str]) -> None:
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if start.exists() and int(start.read_text()) <= 1:
        pytest.skip("every user may open low ports on this host")
    result = run(tmp_path, "--listen", "127.0.0.1:1", "--admin-listen", "", *workers,
                 preexec_fn=_drop_net_bind_service)
    if result.returncode == 97:
        pytest.skip("cannot drop CAP_NET_BIND_SERVICE here")
    assert one_line(result) == ("gateway: cannot listen on 127.0.0.1:1 (--listen): permission denied "
                                "(ports below 1024 need root or CAP_NET_BIND_SERVICE)")


def test_a_bad_config(tmp_path: Path, workers: list[str]) -> None:
    toml = config("http://127.0.0.1:99999")
    line = one_line(run(tmp_path, "--listen", "127.0.0.1:0", "--admin-listen", "", *workers, toml=toml))
    assert line == (f"{tmp_path / 'routes.toml'}: upstreams.svc.targets[0]: the port must be a number from 1 to "
                    "65535, got 'http://127.0.0.1:99999'")


def test_workers_without_a_fixed_port(tmp_path: Path) -> None:
    line = one_line(run(tmp_path, "--listen", "127.0.0.1:0", "--admin-listen", "", "--workers", "2"))
    assert line == "gateway: 2 workers need a fixed port in --listen / gateway.listen, not 0"


def test_a_config_that_cannot_be_read(tmp_path: Path) -> None:
    result = gateway_run(tmp_path / "missing.toml")
    assert one_line(result).startswith(f"{tmp_path / 'missing.toml'}: cannot read: ")
