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

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[upstreams.svc]
targets = ["http://127.0.0.1:9"]

[[routes]]
name = "svc"
path = "/{tail:.*}"
upstream = "svc"
"""


@pytest.fixture
def occupied() -> Iterator[int]:
    """A port on 127.0.0.1 that a listening socket holds."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def run(tmp_path: Path, *options: str, config: str = CONFIG) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "routes.toml"
    path.write_text(textwrap.dedent(config))
    return subprocess.run(
        [sys.executable, "-m", "gateway", "run", str(path), *options],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=dict(os.environ), check=False,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert "Unclosed" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "workers"])
def test_public_port_in_use(tmp_path: Path, occupied: int, workers: list[str]) -> None:
    line = one_line(run(tmp_path, "--listen", f"127.0.0.1:{occupied}", "--admin-listen", "127.0.0.1:0", *workers))
    assert line == (f"gateway: cannot listen on 127.0.0.1:{occupied} (--listen): address already in use "
                    "(is another gateway or server running on that port?)")


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "workers"])
def test_admin_port_in_use(tmp_path: Path, occupied: int, workers: list[str]) -> None:
    line = one_line(run(tmp_path, "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", f"127.0.0.1:{occupied}",
                        *workers))
    assert line.startswith(f"gateway: cannot listen on 127.0.0.1:{occupied} (--admin-listen): address already in use")


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "workers"])
def test_port_in_use_named_by_the_config(tmp_path: Path, occupied: int, workers: list[str]) -> None:
    config = f'[gateway]\nlisten = "127.0.0.1:{occupied}"\nadmin_listen = "127.0.0.1:{free_port()}"\n' + CONFIG
    line = one_line(run(tmp_path, *workers, config=config))
    assert line.startswith(f"gateway: cannot listen on 127.0.0.1:{occupied} (gateway.listen): address already in use")


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "workers"])
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
@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "workers"])
def test_permission_denied_on_a_low_port(tmp_path: Path, workers: list[str]) -> None:
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if start.exists() and int(start.read_text()) <= 1:
        pytest.skip("every user may open low ports on this host")
    config = tmp_path / "routes.toml"
    config.write_text(CONFIG)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", str(config), "--listen", "127.0.0.1:1", "--admin-listen", "",
         *workers],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False, preexec_fn=_drop_net_bind_service,
    )
    if result.returncode == 97:
        pytest.skip("cannot drop CAP_NET_BIND_SERVICE here")
    assert one_line(result) == ("gateway: cannot listen on 127.0.0.1:1 (--listen): permission denied "
                                "(ports below 1024 need root or CAP_NET_BIND_SERVICE)")


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["single", "workers"])
def test_a_bad_config(tmp_path: Path, workers: list[str]) -> None:
    config = CONFIG.replace("http://127.0.0.1:9", "http://127.0.0.1:99999")
    line = one_line(run(tmp_path, "--listen", "127.0.0.1:0", "--admin-listen", "", *workers, config=config))
    assert line == (f"{tmp_path / 'routes.toml'}: upstreams.svc.targets[0]: the port must be a number from 1 to "
                    "65535, got 'http://127.0.0.1:99999'")


def test_workers_without_a_fixed_port(tmp_path: Path) -> None:
    line = one_line(run(tmp_path, "--listen", "127.0.0.1:0", "--admin-listen", "", "--workers", "2"))
    assert line == "gateway: 2 workers need a fixed port in --listen / gateway.listen, not 0"


def test_a_config_that_cannot_be_read(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", str(tmp_path / "missing.toml")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )
    assert one_line(result).startswith(f"{tmp_path / 'missing.toml'}: cannot read: ")
