"""Orchestration of 2 calls: the gateway against the naive aiohttp gather-and-merge handler, same run.

Targets, each measured in the same run (compare the ratio, not absolute numbers across runs):

    naive    wrk -> bench/naive_orchestrator.py (asyncio.gather of 2 session.get, merge; uvloop) -> nginx x2
    gateway  wrk -> `gateway run` (one route, 2 independent [[routes.steps]]) -> nginx x2

Both answer ``GET /dashboard/1`` with ``{"user": <nginx /users/1>, "orders": <nginx /orders?user=1>}``;
the two upstream endpoints are static JSON served by one nginx. Goal: gateway/naive >= 1.5x.

Same wrk options, pinning (server under test alone on CPU 1; wrk + nginx on CPU 0), interleaved
rounds and CPU accounting as bench/run.py, whose helpers this script imports. See README.md.

    .venv/bin/python bench/orchestration.py [--quick] [--duration 10] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # `python bench/orchestration.py` too
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    BENCH_DIR,
    PINNING,
    RESULTS_DIR,
    WRK_DONE_LUA,
    BenchError,
    Options,
    Sample,
    Service,
    Services,
    contention_warning,
    ensure_tools,
    fetch,
    free_port,
    machine,
    median_sample,
    terminate_on_signals,
    wrk,
)
from bench.run import measure as run_measure
from bench.run import nginx_config as run_nginx_config

USER = {"id": 1, "name": "Ada", "city": "London"}
ORDERS = [{"id": 101, "total": 12.5}]
EXPECTED = {"user": USER, "orders": ORDERS}
PATH = "/dashboard/1"
TARGETS = ("naive", "gateway")
GOAL = 1.5  # the gateway/naive throughput we aim for
PROFILE_SECONDS = 6
PROFILE_TOP = 30


# -- options -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Options:
    """The options of bench/run.py (same defaults); ``--profile`` records py-spy raw samples."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per target (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per target (default 2)")
    parser.add_argument("--quick", action="store_true", help="one round, 3 s per target, 1 s warm-up")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="measure both targets N times, interleaved; report medians (default 3)")
    parser.add_argument("--profile", action="store_true",
                        help=f"afterwards, py-spy --native both targets for {PROFILE_SECONDS} s under load "
                             "and print self time per frame")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    args = parser.parse_args(argv)
    duration, warmup, rounds = (3.0, 1.0, 1) if args.quick else (args.duration, args.warmup, args.rounds)
    if duration < 1 or args.connections < 1 or args.threads < 1 or rounds < 1:
        parser.error("duration must be >= 1 s; connections, threads and rounds >= 1")
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Options(duration, warmup, args.connections, args.threads, rounds, pin, args.profile, stamp)


# -- configs -------------------------------------------------------------------------------


def nginx_config(workdir: Path, port: int) -> Path:
    """Two static JSON endpoints: /users/1 and /orders (any query string)."""

    def literal(value: object) -> str:
        return json.dumps(value, separators=(",", ":")).replace("'", "\\'")

    return run_nginx_config(workdir, port, f"""default_type application/json;
        location = /users/1 {{ return 200 '{literal(USER)}'; }}
        location = /orders {{ return 200 '{literal(ORDERS)}'; }}
        location / {{ return 404 '{{"error":"not found"}}'; }}""")


def gateway_config(workdir: Path, upstream_port: int) -> Path:
    """One orchestrated route, two independent steps, no plugins."""
    text = f"""
[gateway]
timeout = "10s"

[upstreams.users]
targets = ["http://127.0.0.1:{upstream_port}"]

[upstreams.orders]
targets = ["http://127.0.0.1:{upstream_port}"]

[[routes]]
name = "dashboard"
path = "/dashboard/{{id}}"
methods = ["GET"]

  [[routes.steps]]
  name = "user"
  upstream = "users"
  path = "/users/{{path.id}}"
  into = "user"

  [[routes.steps]]
  name = "orders"
  upstream = "orders"
  path = "/orders?user={{path.id}}"
  into = "orders"
"""
    path = workdir / "gateway.toml"
    path.write_text(text)
    return path


# -- starting and checking the targets -------------------------------------------------------


def start_all(services: Services, nginx: str, workdir: Path) -> dict[str, Service]:
    server_cpu, load_cpu = "1", "0"
    nginx_port = free_port()
    upstream = f"http://127.0.0.1:{nginx_port}"
    conf = nginx_config(workdir, nginx_port)
    services.start("upstream", [nginx, "-e", str(workdir / "nginx-error.log"), "-c", str(conf)],
                   upstream + "/users/1", load_cpu)
    out: dict[str, Service] = {}
    port = free_port()
    out["naive"] = services.start(
        "naive", [sys.executable, str(BENCH_DIR / "naive_orchestrator.py"), "--listen", f"127.0.0.1:{port}",
                  "--upstream", upstream],
        f"http://127.0.0.1:{port}{PATH}", server_cpu)
    port, admin = free_port(), free_port()
    out["gateway"] = services.start(
        "gateway", [sys.executable, "-m", "gateway", "run", str(gateway_config(workdir, nginx_port)),
                    "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}",
                    "--log-level", "warning"],
        f"http://127.0.0.1:{port}{PATH}", server_cpu)
    return out


def answer(service: Service) -> Any:
    """The parsed JSON of one GET; 200 required."""
    try:
        status, body = fetch(service.url)
    except OSError as exc:
        raise BenchError(f"{service.name}: GET {service.url} failed: {exc}") from exc
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if status != 200 or parsed is None:
        raise BenchError(f"{service.name}: GET {service.url} answered {status} {body[:200]!r}")
    return parsed


def verify_same(targets: dict[str, Service]) -> None:
    """Before measuring: every target answers the same JSON, which is the expected merge."""
    answers = {name: answer(service) for name, service in targets.items()}
    if any(value != EXPECTED for value in answers.values()):
        shown = "\n".join(f"  {name}: {json.dumps(value)}" for name, value in answers.items())
        raise BenchError(f"the targets do not answer the same JSON (expected {json.dumps(EXPECTED)}):\n{shown}")
    print(f"both targets answer {json.dumps(EXPECTED, separators=(',', ':'))}", flush=True)


# -- measuring (bench/run.py's measure, with this benchmark's answer check) ------------------


def check_answer(service: Service) -> None:
    if (body := answer(service)) != EXPECTED:
        raise BenchError(f"{service.name}: the answer changed: {json.dumps(body)}")


def measure(service: Service, options: Options, script: Path) -> Sample:
    return run_measure(service, options, script, check_answer)


Round = dict[str, Sample]


def run_rounds(targets: dict[str, Service], options: Options, script: Path) -> list[Round]:
    """Interleaved; the order alternates between rounds so neither target always goes first."""
    rounds: list[Round] = []
    for number in range(1, options.rounds + 1):
        samples: Round = {}
        order = TARGETS if number % 2 else tuple(reversed(TARGETS))
        for name in order:
            print(f"round {number}/{options.rounds}: {name} ...", flush=True)
            samples[name] = measure(targets[name], options, script)
        rounds.append(samples)
    return rounds


def ratios(rounds: list[Round]) -> dict[str, float]:
    """Within each round, then the median over rounds (as bench/run.py)."""
    return {
        "gateway/naive": statistics.median(r["gateway"].rps / r["naive"].rps for r in rounds),
        "gateway/naive (CPU cost)": statistics.median(
            r["naive"].cpu_us_per_request / r["gateway"].cpu_us_per_request for r in rounds
        ),
    }


# -- profiling (optional) --------------------------------------------------------------------


def py_spy_binary() -> str:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(py_spy, os.X_OK):
        raise BenchError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return py_spy


def record(service: Service, options: Options, script: Path) -> Path:
    """py-spy --native raw samples of ``service`` under the same wrk load (not a measured pass)."""
    out = RESULTS_DIR / f"{options.stamp}-orchestration-{service.name}.raw"
    command = [py_spy_binary(), "record", "--native", "-p", str(service.process.pid), "-d", str(PROFILE_SECONDS),
               "--format", "raw", "-o", str(out)]
    if options.pin:
        command = ["taskset", "-c", "0", *command]
    print(f"profiling {service.name} for {PROFILE_SECONDS} s ...", flush=True)
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          start_new_session=True) as spy:
        try:
            wrk(service.url, PROFILE_SECONDS + 1, options, script)
            _, err = spy.communicate(timeout=60)
        finally:
            if spy.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(spy.pid, signal.SIGKILL)
                spy.wait()
    if spy.returncode != 0:
        raise BenchError(f"py-spy failed: {err.decode(errors='replace')}")
    return out


def frame_area(frame: str) -> str:
    """What a frame belongs to: a gateway file, a library, or native code."""
    where = frame.rpartition(" (")[2].rstrip(")").rsplit(":", 1)[0]
    if "/gateway/" in where:
        return "gateway/" + where.rpartition("/gateway/")[2]
    if where.startswith("gateway/"):
        return where
    for library in ("aiohttp", "asyncio", "uvloop", "json", "multidict", "yarl", "prometheus_client", "httptools",
                    "pydantic", "jmespath"):
        if f"/{library}/" in where or where.startswith(f"{library}/"):
            return library
    if where.endswith(".py"):
        return "python: " + where.rpartition("/")[2]
    return "native: " + (where.rpartition("/")[2] or frame)


def summarize(raw: Path) -> dict[str, Any]:
    """Self time per frame and per area, and inclusive time of every gateway/orchestration frame."""
    self_frames: Counter[str] = Counter()
    self_areas: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        self_frames[leaf.rsplit(":", 1)[0] + ")" if ":" in leaf else leaf] += count  # without the line
        self_areas[frame_area(leaf)] += count
        for frame in {f.rsplit(":", 1)[0] + ")" for f in frames if "gateway/orchestration/" in f}:
            inclusive[frame] += count
    share = (lambda n: round(100 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "self_by_area_pct": {k: share(v) for k, v in self_areas.most_common(PROFILE_TOP)},
        "self_by_frame_pct": {k: share(v) for k, v in self_frames.most_common(PROFILE_TOP)},
        "inclusive_orchestration_pct": {k: share(v) for k, v in inclusive.most_common(PROFILE_TOP)},
    }


def show_profile(name: str, summary: dict[str, Any]) -> str:
    lines = [f"{name}: {summary['samples']} samples (% of on-CPU samples)"]
    for title, key, limit in (("self time by area", "self_by_area_pct", 15),
                              ("self time by frame", "self_by_frame_pct", 20),
                              ("inclusive, gateway/orchestration frames", "inclusive_orchestration_pct", 15)):
        if summary[key]:
            lines.append(f"  {title}:")
            lines.extend(f"    {pct:5.1f}%  {frame}" for frame, pct in list(summary[key].items())[:limit])
    return "\n".join(lines)


# -- reporting -------------------------------------------------------------------------------


def table(best: dict[str, Sample], ratio: dict[str, float]) -> str:
    header = f"{'target':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'server CPU':>10} {'CPU us/req':>10}"
    lines = [header, "-" * len(header)]
    for name in TARGETS:
        s = best[name]
        lines.append(f"{name:<10} {s.rps:>9.0f} {s.p50_ms:>8.2f} {s.p99_ms:>8.2f} "
                     f"{s.server_cpu:>9.0%} {s.cpu_us_per_request:>10.1f}")
    lines.append("")
    lines.extend(f"{key:<26} {value:.2f}x" for key, value in ratio.items())
    verdict = "met" if ratio["gateway/naive"] >= GOAL else "NOT met"
    lines.append(f"goal gateway/naive >= {GOAL}x: {verdict}")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {}
    for package in ("aiohttp", "uvloop", "httptools"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def code_version() -> str:
    """The commit measured, with "+dirty" when gateway/ has uncommitted changes (the code moves)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=BENCH_DIR.parent, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "gateway") else "")


def write_results(options: Options, rounds: list[Round], ratio: dict[str, float], info: dict[str, Any],
                  profiles: dict[str, dict[str, Any]]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{options.stamp}-orchestration.json"
    data = {
        "timestamp": options.stamp,
        "benchmark": "orchestration of 2 independent calls",
        "path": PATH,
        "expected": EXPECTED,
        "options": asdict(options),
        "pinning": PINNING if options.pin else "none",
        "machine": {**info, "loadavg_after": os.getloadavg()},
        "results": {name: asdict(median_sample(rounds, name)) for name in TARGETS},
        "ratios": ratio,
        "goal": GOAL,
        "rounds": [{name: asdict(sample) for name, sample in r.items()} for r in rounds],
        "profiles": profiles,
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# -- main ------------------------------------------------------------------------------------


def measure_all(options: Options, nginx: str) -> tuple[list[Round], dict[str, dict[str, Any]]]:
    """Start every process, check, measure (and profile); stop everything we started."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-orch-") as tmp, terminate_on_signals():
        workdir = Path(tmp)
        script = workdir / "done.lua"
        script.write_text(WRK_DONE_LUA)
        services = Services(workdir, options.pin)
        profiles: dict[str, dict[str, Any]] = {}
        try:
            targets = start_all(services, nginx, workdir)
            verify_same(targets)
            rounds = run_rounds(targets, options, script)
            if options.profile:
                RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                for name in TARGETS:
                    raw = record(targets[name], options, script)
                    profiles[name] = {"raw": str(raw), **summarize(raw)}
        finally:
            services.stop_all()
    return rounds, profiles


def run(options: Options) -> int:
    nginx = ensure_tools()
    info = {**machine(), "versions": versions(), "commit": code_version()}
    rounds, profiles = measure_all(options, nginx)
    best = {name: median_sample(rounds, name) for name in TARGETS}
    ratio = ratios(rounds)
    print()
    print(f"GET {PATH}: 2 upstream calls merged; {options.connections} connections, {options.threads} wrk "
          f"thread(s), {options.duration:.0f} s per target, {options.rounds} round(s) (median), "
          f"pinning: {PINNING if options.pin else 'off'}; gateway at {info['commit']}")
    print(table(best, ratio))
    warning = contention_warning(rounds)
    if warning:
        print(warning)
    for name, summary in profiles.items():
        print()
        print(show_profile(name, summary))
    print(f"\nresults: {write_results(options, rounds, ratio, info, profiles)}")
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
