"""What the wrk benchmarks share to set up: options, tools, processes, nginx, gateway configs,
and a checkout of an earlier revision of the gateway to measure in the same run
(``--baseline-rev``). Measuring and reporting are in bench/measuring.py.

Every process is started in its own process group and stopped by that id when the run ends,
also on Ctrl-C, SIGTERM or a failure. The server under test runs alone on CPU 1, wrk and the
upstreams on CPU 0 (see README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CONFIGS_DIR = BENCH_DIR / "configs"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
PINNING = "proxy under test on CPU 1; wrk + nginx upstream on CPU 0"
SERVER_CPU, LOAD_CPU = "1", "0"

WRK_DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
    .. '"timeout":%d,"status":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""
WRK_ERRORS = ("connect", "read", "write", "timeout", "status")


class BenchError(RuntimeError):
    """Something is wrong with the setup or a target answered badly: the run is void."""


# -- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    connections: int
    threads: int
    rounds: int
    pin: bool
    profile: bool
    stamp: str  # names the result files of this run
    baseline_rev: str | None = None  # an earlier revision measured alongside, as given


def parse_options(argv: Sequence[str] | None, description: str | None, rounds_help: str,
                  profile_help: str) -> Options:
    """The wrk benchmarks' command line (same flags and defaults for every script)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per target (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target (default 2)")
    parser.add_argument("--quick", action="store_true", help="one round, 3 s per target, 1 s warm-up")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help=rounds_help)
    parser.add_argument("--profile", action="store_true", help=profile_help)
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--baseline-rev", metavar="REV",
                        help="also measure the gateway as of git revision REV (checked out in a temporary "
                             "worktree), as extra targets named <target>@REV in every round")
    args = parser.parse_args(argv)
    duration, warmup, rounds = (3.0, 1.0, 1) if args.quick else (args.duration, args.warmup, args.rounds)
    if duration < 1 or args.connections < 1 or args.threads < 1 or rounds < 1:
        parser.error("duration must be >= 1 s; connections, threads and rounds >= 1")
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Options(duration, warmup, args.connections, args.threads, rounds, pin, args.profile, stamp,
                   args.baseline_rev)


def options_record(options: Options) -> dict[str, Any]:
    """The options as written to the result file (``baseline_rev`` only when given)."""
    return {key: value for key, value in asdict(options).items() if value is not None}


# -- tools ---------------------------------------------------------------------------------


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def ensure_tools() -> str:
    """Install nginx and wrk from Debian when missing; return the nginx binary."""
    if nginx_binary() is None or shutil.which("wrk") is None:
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print("installing nginx-light and wrk (apt-get)", flush=True)
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "nginx-light", "wrk"], check=True, env=env)
    nginx = nginx_binary()
    if nginx is None or shutil.which("wrk") is None:
        raise BenchError("nginx or wrk is still missing after apt-get install")
    return nginx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def py_spy_binary() -> str:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(py_spy, os.X_OK):
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return py_spy


def git(*args: str) -> str:
    """``git args`` in the repository; its output, or "" when git fails."""
    done = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def code_version() -> str:
    """The commit measured, with "+dirty" when gateway/ has uncommitted changes (the code moves)."""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "gateway") else "")


# -- where the gateway's code comes from ------------------------------------------------------


@dataclass(frozen=True)
class GatewayCode:
    """The gateway package a target runs: this working tree, or a checkout of an earlier revision.

    A process started with ``cwd = root`` and ``env`` imports ``gateway`` (and ``plugins``)
    from ``root``: ``python -m`` puts the working directory first on ``sys.path``, and
    ``PYTHONPATH`` comes before the editable install's finder.
    """

    root: Path
    suffix: str = ""  # appended to the target names: "" for this tree, "@<rev>" for a baseline
    commit: str = ""
    env: dict[str, str] | None = None  # None: this process's environment

    def imported_from(self) -> dict[str, str]:
        """Where a process started like the targets imports ``gateway`` and ``plugins`` from."""
        probe = "import json, gateway, plugins; print(json.dumps([gateway.__file__, plugins.__file__]))"
        done = subprocess.run([sys.executable, "-c", probe], cwd=self.root, env=self.env, capture_output=True,
                              text=True, check=False, timeout=60)
        if done.returncode != 0:
            raise BenchError(f"python cannot import the gateway from {self.root}:\n{done.stderr}")
        gateway_file, plugins_file = json.loads(done.stdout)
        return {"gateway": gateway_file, "plugins": plugins_file}

    def check(self) -> None:
        """The interpreter imports this code from ``root``, not another copy: else the run is void."""
        found = self.imported_from()
        for package, where in found.items():
            if not Path(where).resolve().is_relative_to(self.root.resolve()):
                raise BenchError(f"{package} of {self.label()} is imported from {where}, not from {self.root}")
        print(f"gateway {self.label()}: {found['gateway']}", flush=True)

    def label(self) -> str:
        return self.suffix.lstrip("@") or "working tree"


CURRENT = GatewayCode(REPO_DIR)


@contextlib.contextmanager
def baseline_checkout(rev: str) -> Iterator[GatewayCode]:
    """``git worktree add --detach`` of ``rev`` in a temporary directory, removed afterwards."""
    commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if not commit:
        raise BenchError(f"--baseline-rev {rev}: not a commit of {REPO_DIR}")
    short = git("rev-parse", "--short", commit)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-bench-rev-"))
    tree = tmp / "tree"
    try:
        added = subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=REPO_DIR,
                               capture_output=True, text=True, check=False)
        if added.returncode != 0:
            raise BenchError(f"git worktree add {rev} failed:\n{added.stderr}")
        pythonpath = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)
        yield GatewayCode(tree, f"@{short}", commit, {**os.environ, "PYTHONPATH": pythonpath})
    finally:
        if tree.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_DIR,
                           capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO_DIR, capture_output=True, check=False)


# -- processes -----------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def origin(self) -> str:
        """``http://host:port`` of ``url``."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Services:
    """Every process this script started; each in its own process group, stopped by that id."""

    workdir: Path
    pin: bool
    started: list[Service] = field(default_factory=list)

    def start(self, name: str, command: list[str], url: str, cpu: str | None, code: GatewayCode = CURRENT,
              ready: str | None = None) -> Service:
        """Start ``command`` (from ``code.root``) and wait until ``ready`` (default ``url``) answers."""
        if self.pin and cpu is not None:
            command = ["taskset", "-c", cpu, *command]
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=code.root, env=code.env,
            )
        service = Service(name, url, process, log)
        self.started.append(service)
        wait_ready(service, ready or url)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.started):
            stop(service.process)
        self.started.clear()


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group we created for ``process``, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def fetch(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return int(response.status), bytes(response.read())


def get(service: Service) -> tuple[int, bytes]:
    """``GET service.url``: status and body; no answer makes the run void."""
    try:
        return fetch(service.url)
    except OSError as exc:
        raise BenchError(f"{service.name}: GET {service.url} failed: {exc}") from exc


def wait_ready(service: Service, url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise BenchError(f"{service.name} exited with {service.process.returncode}:\n{tail(service.log)}")
        with contextlib.suppress(OSError):
            fetch(url, timeout=1.0)
            return
        time.sleep(0.1)
    raise BenchError(f"{service.name} did not answer {url} within {READY_TIMEOUT:.0f} s:\n{tail(service.log)}")


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit so the cleanup below runs (Ctrl-C already does)."""

    def on_signal(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


Codes = tuple[GatewayCode, ...]  # this tree, then the baseline checkout when one is asked for


@dataclass(frozen=True)
class Session:
    workdir: Path  # temporary: configs, logs, wrk scripts
    services: Services
    script: Path  # wrk's Lua script that prints the BENCH_JSON line
    codes: Codes


@contextlib.contextmanager
def session(prefix: str, pin: bool, baseline_rev: str | None = None) -> Iterator[Session]:
    """A temporary directory, the processes started in it, and the baseline checkout: all gone
    when the block ends, also on a failure, Ctrl-C, SIGTERM or SIGHUP."""
    with terminate_on_signals(), contextlib.ExitStack() as stack:
        codes = [CURRENT]
        if baseline_rev is not None:
            codes.append(stack.enter_context(baseline_checkout(baseline_rev)))
            for code in codes:  # each target set runs the code it is named for
                code.check()
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
        script = workdir / "done.lua"
        script.write_text(WRK_DONE_LUA)
        services = Services(workdir, pin)
        stack.callback(services.stop_all)  # before the checkout and the directory go
        yield Session(workdir, services, script, tuple(codes))


# -- nginx and the gateway ------------------------------------------------------------------


def static_json(answers: dict[str, object], otherwise: str = "") -> str:
    """nginx ``location`` blocks: each ``location <key>`` answers 200 with ``answers[key]`` as
    compact JSON (a str is sent as it is); ``otherwise`` is appended (more blocks)."""
    blocks = ["default_type application/json;"]
    for location, value in answers.items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        quoted = text.replace("'", "\\'")
        blocks.append(f"location {location} {{ return 200 '{quoted}'; }}")
    return "\n        ".join([*blocks, otherwise] if otherwise else blocks)


def nginx_config(workdir: Path, port: int, locations: str) -> Path:
    """nginx serving static answers: ``locations`` are its ``location`` blocks."""
    text = f"""
daemon off;
master_process on;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        {locations}
    }}
}}
"""
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def start_nginx(services: Services, nginx: str, name: str, locations: str, path: str) -> Service:
    """nginx (1 worker, keep-alive, no access log) on a free port and CPU 0; ``path`` must answer."""
    port = free_port()
    conf = nginx_config(services.workdir, port, locations)
    return services.start(name, [nginx, "-e", str(services.workdir / "nginx-error.log"), "-c", str(conf)],
                          f"http://127.0.0.1:{port}{path}", LOAD_CPU)


def gateway_config(workdir: Path, template: str, name: str, **values: object) -> Path:
    """``bench/configs/<template>.toml`` with its ``$names`` filled in, written as ``<name>.toml``."""
    text = string.Template((CONFIGS_DIR / f"{template}.toml").read_text()).substitute(values)
    path = workdir / f"{name}.toml"
    path.write_text(text)
    return path


def start_gateway(services: Services, name: str, config: Path, path: str, code: GatewayCode = CURRENT,
                  ready_on_admin: bool = False) -> Service:
    """``gateway run config`` (one process, admin port on, warnings only) on CPU 1; its url is
    ``path`` on the public port, ready when that answers (or the admin ``/readyz``)."""
    port, admin = free_port(), free_port()
    url = f"http://127.0.0.1:{port}{path}"
    return services.start(
        name, [sys.executable, "-m", "gateway", "run", str(config), "--listen", f"127.0.0.1:{port}",
               "--admin-listen", f"127.0.0.1:{admin}", "--log-level", "warning"],
        url, SERVER_CPU, code, f"http://127.0.0.1:{admin}/readyz" if ready_on_admin else None)
