"""Throughput and latency of the gateway against same-run baselines, measured with wrk.

Targets, each measured in the same run (the machine is shared and noisy: compare ratios
against baselines of the same run, not absolute numbers across runs):

    direct           wrk -> nginx (static JSON, keep-alive)
    naive            wrk -> bench/naive_proxy.py (30-line aiohttp proxy, uvloop) -> nginx
    gateway_bare     wrk -> `gateway run` (one route, no plugins) -> nginx
    gateway_plugins  wrk -> `gateway run` (request_id + headers plugins) -> nginx

Pinning (when taskset exists and there are >= 2 CPUs): each proxy under test alone on CPU 1;
wrk and the nginx upstream share CPU 0 (so `direct` is wrk and nginx on one core). See README.md.

    .venv/bin/python bench/run.py [--duration 10] [--quick] [--connections 50] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
BODY = '{"id":42,"name":"benchmark","tags":["a","b","c"],"active":true,"score":3.14,"note":"static upstream"}'
PATH = "/api/items/42?view=full"
TARGETS = ("direct", "naive", "gateway_bare", "gateway_plugins")
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
PINNING = "proxy under test on CPU 1; wrk + nginx upstream on CPU 0"

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


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per target (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target (default 2)")
    parser.add_argument("--quick", action="store_true", help="one round, 3 s per target, 1 s warm-up")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure all targets N times, interleaved; report medians (default 3)")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, record py-spy flame graphs of both gateway targets under load")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = parser.parse_args(argv)
    duration, warmup, rounds = (3.0, 1.0, 1) if args.quick else (args.duration, args.warmup, args.rounds)
    if duration < 1 or args.connections < 1 or args.threads < 1 or rounds < 1:
        parser.error("duration must be >= 1 s; connections, threads and rounds >= 1")
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Options(duration, warmup, args.connections, args.threads, rounds, pin, args.profile, stamp)


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


# -- processes -----------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Services:
    """Every process this script started; each in its own process group, stopped by that id."""

    workdir: Path
    pin: bool
    started: list[Service] = field(default_factory=list)

    def start(self, name: str, command: list[str], url: str, cpu: str | None) -> Service:
        if self.pin and cpu is not None:
            command = ["taskset", "-c", cpu, *command]
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=BENCH_DIR.parent,
            )
        service = Service(name, url, process, log)
        self.started.append(service)
        wait_ready(service)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.started):
            stop(service.process)
        self.started.clear()


def stop(process: subprocess.Popen[bytes]) -> None:
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


def wait_ready(service: Service) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise BenchError(f"{service.name} exited with {service.process.returncode}:\n{tail(service.log)}")
        with contextlib.suppress(OSError):
            fetch(service.url, timeout=1.0)
            return
        time.sleep(0.1)
    raise BenchError(f"{service.name} did not answer {service.url} within {READY_TIMEOUT:.0f} s:\n{tail(service.log)}")


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def verify(service: Service) -> None:
    """One request before measuring: must be 200 with nginx's body."""
    try:
        status, body = fetch(service.url)
    except OSError as exc:
        raise BenchError(f"{service.name}: GET {service.url} failed: {exc}") from exc
    if status != 200 or json.loads(body) != json.loads(BODY):
        raise BenchError(f"{service.name}: GET {service.url} answered {status} {body[:200]!r}")


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


# -- configs -------------------------------------------------------------------------------


def nginx_config(workdir: Path, port: int, locations: str | None = None) -> Path:
    """nginx serving static answers: ``locations`` (nginx ``location`` blocks), by default
    the proxy benchmark's one JSON body on every path."""
    if locations is None:
        body = BODY.replace("'", "\\'")
        locations = f"""location / {{
            default_type application/json;
            return 200 '{body}';
        }}"""
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


def gateway_config(workdir: Path, name: str, upstream_port: int, plugins: bool) -> Path:
    text = f"""
[gateway]
timeout = "10s"

[upstreams.nginx]
targets = ["http://127.0.0.1:{upstream_port}"]

[[routes]]
name = "bench"
path = "/{{tail:.*}}"
upstream = "nginx"
"""
    if plugins:
        text = text.replace("[[routes]]", '[[plugins]]\nuse = "request_id"\n\n[[routes]]')
        text += """
  [[routes.plugins]]
  use = "headers"
  request = { set = { "X-Bench" = "1" }, remove = ["X-Debug"] }
  response = { set = { "Cache-Control" = "no-store" }, remove = ["Server"] }
"""
    path = workdir / f"{name}.toml"
    path.write_text(text)
    return path


# -- starting the targets --------------------------------------------------------------------


def start_all(services: Services, nginx: str, workdir: Path) -> dict[str, Service]:
    server_cpu, load_cpu = "1", "0"
    nginx_port = free_port()
    upstream = f"http://127.0.0.1:{nginx_port}"
    conf = nginx_config(workdir, nginx_port)
    out = {"direct": services.start("direct", [nginx, "-e", str(workdir / "nginx-error.log"), "-c", str(conf)],
                                    upstream + PATH, load_cpu)}
    port = free_port()
    out["naive"] = services.start(
        "naive", [sys.executable, str(BENCH_DIR / "naive_proxy.py"), "--listen", f"127.0.0.1:{port}",
                  "--upstream", upstream],
        f"http://127.0.0.1:{port}{PATH}", server_cpu)
    for name, plugins in (("gateway_bare", False), ("gateway_plugins", True)):
        config = gateway_config(workdir, name, nginx_port, plugins)
        port, admin = free_port(), free_port()
        out[name] = services.start(
            name, [sys.executable, "-m", "gateway", "run", str(config), "--listen", f"127.0.0.1:{port}",
                   "--admin-listen", f"127.0.0.1:{admin}", "--log-level", "warning"],
            f"http://127.0.0.1:{port}{PATH}", server_cpu)
    return out


# -- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    target: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu: float  # share of one CPU used by the server under test during the run
    cpu_us_per_request: float


def wrk(url: str, seconds: float, options: Options, script: Path) -> dict[str, Any]:
    command = ["wrk", f"-t{options.threads}", f"-c{options.connections}", f"-d{max(1, round(seconds))}s",
               "--latency", "-s", str(script), url]
    if options.pin:
        command = ["taskset", "-c", "0", *command]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 60)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return result
    raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


def check_errors(name: str, result: dict[str, Any]) -> None:
    errors = {k: result[k] for k in ("connect", "read", "write", "timeout", "status") if result[k]}
    if errors or not result["requests"]:
        raise BenchError(f"{name}: wrk saw errors {errors} in {result['requests']} requests "
                         "(status = responses with a status >= 400)")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU of every process in process group ``pgid`` (nginx: master + worker)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # fields[0] is the state; pgrp is the 5th stat field
                total += int(fields[11]) + int(fields[12])
    return total / tick


def measure(service: Service, options: Options, script: Path,
            check: Callable[[Service], None] = verify) -> Sample:
    """Check the answer, warm up, then one timed wrk pass with the server's CPU time."""
    check(service)
    check_errors(f"{service.name} warm-up", wrk(service.url, options.warmup, options, script))
    cpu_before = group_cpu_seconds(service.process.pid)
    result = wrk(service.url, options.duration, options, script)
    cpu = group_cpu_seconds(service.process.pid) - cpu_before
    check_errors(service.name, result)
    seconds = result["duration_us"] / 1e6
    requests = int(result["requests"])
    return Sample(
        service.name, requests, seconds, requests / seconds,
        result["p50_us"] / 1000, result["p90_us"] / 1000, result["p99_us"] / 1000, result["max_us"] / 1000,
        cpu / seconds, cpu / requests * 1e6,
    )


Round = dict[str, Sample]
RATIOS = {  # name: (numerator, denominator), throughput
    "gateway_bare/naive": ("gateway_bare", "naive"),
    "gateway_plugins/naive": ("gateway_plugins", "naive"),
    "gateway_plugins/gateway_bare": ("gateway_plugins", "gateway_bare"),
    "naive/direct": ("naive", "direct"),
}


def run_rounds(targets: dict[str, Service], options: Options, script: Path) -> list[Round]:
    rounds: list[Round] = []
    for number in range(1, options.rounds + 1):
        samples: Round = {}
        for name in TARGETS:
            print(f"round {number}/{options.rounds}: {name} ...", flush=True)
            samples[name] = measure(targets[name], options, script)
        rounds.append(samples)
    return rounds


def median_sample(rounds: list[Round], name: str) -> Sample:
    """The round with the median throughput for ``name`` (one real sample, not a mix)."""
    ordered = sorted((r[name] for r in rounds), key=lambda s: s.rps)
    return ordered[(len(ordered) - 1) // 2]


def ratios(rounds: list[Round]) -> dict[str, float]:
    """Each ratio taken within a round (same minute, same noise), then the median over rounds.

    Throughput ratios for every pair of RATIOS; for the gateway also the CPU-cost ratio
    (naive CPU us/req over gateway CPU us/req: above 1 means the gateway is cheaper per request).
    """
    out = {
        key: statistics.median(r[top].rps / r[bottom].rps for r in rounds)
        for key, (top, bottom) in RATIOS.items()
    }
    for name in ("gateway_bare", "gateway_plugins"):
        out[f"{name}/naive (CPU cost)"] = statistics.median(
            r["naive"].cpu_us_per_request / r[name].cpu_us_per_request for r in rounds
        )
    return out


def contention_warning(rounds: list[Round]) -> str | None:
    """Proxies below 90% of their CPU were not the bottleneck: something else took the CPU."""
    low = sorted({s.target for r in rounds for s in r.values() if s.target != "direct" and s.server_cpu < 0.9})
    if not low:
        return None
    return (f"note: {', '.join(low)} used < 90% of CPU 1 in some round: the machine was busy, "
            "throughput is noisy; compare the CPU-cost ratios too")


# -- profiling (optional) --------------------------------------------------------------------


def profile(service: Service, options: Options, script: Path, stamp: str) -> Path:
    """Record a py-spy flame graph of ``service`` under the same wrk load (not a measured pass)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(py_spy, os.X_OK):
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    out = RESULTS_DIR / f"{stamp}-{service.name}.svg"
    seconds = max(1, round(options.duration))
    command = [py_spy, "record", "--pid", str(service.process.pid), "--duration", str(seconds),
               "--rate", "200", "--output", str(out)]
    if options.pin:
        command = ["taskset", "-c", "0", *command]
    print(f"profiling {service.name} for {seconds} s ...", flush=True)
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as spy:
        try:
            wrk(service.url, seconds + 1, options, script)
            _, err = spy.communicate(timeout=60)
        finally:
            if spy.poll() is None:
                spy.kill()
    if spy.returncode != 0:
        raise BenchError(f"py-spy failed: {err.decode(errors='replace')}")
    return out


# -- reporting -------------------------------------------------------------------------------


def table(best: dict[str, Sample], ratio: dict[str, float]) -> str:
    header = f"{'target':<16} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'server CPU':>10} {'CPU us/req':>10}"
    lines = [header, "-" * len(header)]
    for name in TARGETS:
        s = best[name]
        lines.append(f"{name:<16} {s.rps:>9.0f} {s.p50_ms:>8.2f} {s.p99_ms:>8.2f} "
                     f"{s.server_cpu:>9.0%} {s.cpu_us_per_request:>10.1f}")
    lines.append("")
    lines.extend(f"{key:<36} {value:.2f}x" for key, value in ratio.items())
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_before": os.getloadavg(),
    }


def write_results(stamp: str, options: Options, rounds: list[Round], ratio: dict[str, float],
                  info: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{stamp}.json"
    data = {
        "timestamp": stamp,
        "options": asdict(options),
        "pinning": PINNING if options.pin else "none",
        "machine": {**info, "loadavg_after": os.getloadavg()},
        "results": {name: asdict(median_sample(rounds, name)) for name in TARGETS},
        "ratios": ratio,
        "rounds": [{name: asdict(sample) for name, sample in r.items()} for r in rounds],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# -- main ------------------------------------------------------------------------------------


def measure_all(options: Options, nginx: str) -> tuple[list[Round], list[Path]]:
    """Start every target, measure the rounds (and profile), stop everything we started."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp, terminate_on_signals():
        workdir = Path(tmp)
        script = workdir / "done.lua"
        script.write_text(WRK_DONE_LUA)
        services = Services(workdir, options.pin)
        try:
            targets = start_all(services, nginx, workdir)
            rounds = run_rounds(targets, options, script)
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            flames = [profile(targets[name], options, script, options.stamp)
                      for name in ("gateway_bare", "gateway_plugins") if options.profile]
        finally:
            services.stop_all()
    return rounds, flames


def run(options: Options) -> int:
    nginx = ensure_tools()
    info = machine()
    rounds, flames = measure_all(options, nginx)
    best = {name: median_sample(rounds, name) for name in TARGETS}
    ratio = ratios(rounds)
    print()
    print(f"{options.connections} connections, {options.threads} wrk thread(s), {options.duration:.0f} s per target, "
          f"{options.rounds} round(s) (median), pinning: {PINNING if options.pin else 'off'}")
    print(table(best, ratio))
    warning = contention_warning(rounds)
    if warning:
        print(warning)
    print(f"\nresults: {write_results(options.stamp, options, rounds, ratio, info)}")
    for flame in flames:
        print(f"flame graph: {flame}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        return run(options)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process started by the bench was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
