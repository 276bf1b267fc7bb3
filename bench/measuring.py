"""What the wrk benchmarks share once their targets run: one wrk pass per target with the
server's CPU time, interleaved rounds, ratios within a round, py-spy, the printed table and
the result file (bench/harness.py starts the processes)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    LOAD_CPU,
    PINNING,
    RESULTS_DIR,
    WRK_ERRORS,
    BenchError,
    GatewayCode,
    Options,
    Service,
    options_record,
    py_spy_binary,
    stop,
)

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


Round = dict[str, Sample]
Check = Callable[[Service], None]


def wrk_result(stdout: str) -> dict[str, Any] | None:
    """The BENCH_JSON line printed by WRK_DONE_LUA, parsed."""
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return result
    return None


def wrk(url: str, seconds: float, options: Options, script: Path) -> dict[str, Any]:
    command = ["wrk", f"-t{options.threads}", f"-c{options.connections}", f"-d{max(1, round(seconds))}s",
               "--latency", "-s", str(script), url]
    if options.pin:
        command = ["taskset", "-c", LOAD_CPU, *command]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 60)
    result = wrk_result(done.stdout)
    if result is None:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return result


def wrk_errors(result: dict[str, Any]) -> dict[str, int]:
    """wrk's non-zero error counts (status = responses with a status >= 400)."""
    return {k: result[k] for k in WRK_ERRORS if result[k]}


def check_errors(name: str, result: dict[str, Any]) -> None:
    errors = wrk_errors(result)
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


def measure(service: Service, options: Options, script: Path, check: Check) -> Sample:
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


def run_rounds(targets: dict[str, Service], options: Options, script: Path, check: Check,
               alternate: bool = False) -> list[Round]:
    """Every target measured once per round, in the order of ``targets``; with ``alternate``
    that order is reversed every other round so no target always goes first."""
    rounds: list[Round] = []
    names = tuple(targets)
    for number in range(1, options.rounds + 1):
        samples: Round = {}
        order = names if number % 2 or not alternate else tuple(reversed(names))
        for name in order:
            print(f"round {number}/{options.rounds}: {name} ...", flush=True)
            samples[name] = measure(targets[name], options, script, check)
        rounds.append(samples)
    return rounds


def median_sample(rounds: list[Round], name: str) -> Sample:
    """The round with the median throughput for ``name`` (one real sample, not a mix)."""
    ordered = sorted((r[name] for r in rounds), key=lambda s: s.rps)
    return ordered[(len(ordered) - 1) // 2]


def throughput_ratio(rounds: list[Round], top: str, bottom: str) -> float:
    """``top``'s req/s over ``bottom``'s within each round (same minute, same noise), median over rounds."""
    return statistics.median(r[top].rps / r[bottom].rps for r in rounds)


def cost_ratio(rounds: list[Round], top: str, bottom: str) -> float:
    """``bottom``'s CPU us/req over ``top``'s within each round, median over rounds: above 1 means
    ``top`` spends less CPU per request."""
    return statistics.median(r[bottom].cpu_us_per_request / r[top].cpu_us_per_request for r in rounds)


def baseline_ratios(rounds: list[Round], names: Sequence[str], suffix: str, base: str) -> dict[str, float]:
    """For each gateway target ``name`` and its baseline ``name + suffix``: the baseline against
    ``base`` (throughput, CPU cost), then this tree against the baseline (throughput, CPU cost)."""
    out: dict[str, float] = {}
    for name in names:
        old = name + suffix
        out[f"{old}/{base}"] = throughput_ratio(rounds, old, base)
        out[f"{old}/{base} (CPU cost)"] = cost_ratio(rounds, old, base)
    for name in names:
        old = name + suffix
        out[f"{name}/{old}"] = throughput_ratio(rounds, name, old)
        out[f"{name}/{old} (CPU cost)"] = cost_ratio(rounds, name, old)
    return out


def contention_warning(rounds: list[Round]) -> str | None:
    """Proxies below 90% of their CPU were not the bottleneck: something else took the CPU."""
    low = sorted({s.target for r in rounds for s in r.values() if s.target != "direct" and s.server_cpu < 0.9})
    if not low:
        return None
    return (f"note: {', '.join(low)} used < 90% of CPU 1 in some round: the machine was busy, "
            "throughput is noisy; compare the CPU-cost ratios too")


def py_spy(service: Service, options: Options, script: Path, seconds: int, out: Path, args: Sequence[str]) -> Path:
    """``py-spy record`` of ``service`` into ``out`` under the same wrk load (not a measured pass)."""
    command = [py_spy_binary(), "record", "--pid", str(service.process.pid), "--duration", str(seconds),
               *args, "--output", str(out)]
    out.parent.mkdir(parents=True, exist_ok=True)
    if options.pin:
        command = ["taskset", "-c", LOAD_CPU, *command]
    print(f"profiling {service.name} for {seconds} s ...", flush=True)
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          start_new_session=True) as spy:
        try:
            wrk(service.url, seconds + 1, options, script)
            _, err = spy.communicate(timeout=60)
        finally:
            stop(spy)
    if spy.returncode != 0:
        raise BenchError(f"py-spy failed: {err.decode(errors='replace')}")
    return out


# -- reporting -------------------------------------------------------------------------------


def table(best: dict[str, Sample], ratio: dict[str, float], name_width: int, key_width: int) -> str:
    """One row per target (its median round), then the ratios."""
    name_width = max(name_width, *map(len, best))
    key_width = max(key_width, *map(len, ratio))
    header = f"{'target':<{name_width}} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'server CPU':>10} {'CPU us/req':>10}"
    lines = [header, "-" * len(header)]
    for name, s in best.items():
        lines.append(f"{name:<{name_width}} {s.rps:>9.0f} {s.p50_ms:>8.2f} {s.p99_ms:>8.2f} "
                     f"{s.server_cpu:>9.0%} {s.cpu_us_per_request:>10.1f}")
    lines.append("")
    lines.extend(f"{key:<{key_width}} {value:.2f}x" for key, value in ratio.items())
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_before": os.getloadavg(),
    }


def baseline_info(codes: Sequence[GatewayCode]) -> dict[str, Any]:
    """The earlier revision measured besides this tree (if any), for the result file."""
    code = codes[-1]
    return {"baseline": {"commit": code.commit, "target_suffix": code.suffix}} if code.suffix else {}


def results_data(options: Options, rounds: list[Round], ratio: dict[str, float], info: dict[str, Any],
                 **extra: Any) -> dict[str, Any]:
    """The result file's content: options, machine, each target's median round, ratios, every round."""
    return {
        "timestamp": options.stamp,
        **extra,
        "options": options_record(options),
        "pinning": PINNING if options.pin else "none",
        "machine": {**info, "loadavg_after": os.getloadavg()},
        "results": {name: asdict(median_sample(rounds, name)) for name in rounds[0]},
        "ratios": ratio,
        "rounds": [{name: asdict(sample) for name, sample in r.items()} for r in rounds],
    }


def write_json(filename: str, data: dict[str, Any], show: bool = False) -> Path:
    """``data`` as ``bench/results/<filename>`` (the directory is created); with ``show`` the
    path is printed as the run's ``results:`` line."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / filename
    path.write_text(json.dumps(data, indent=2) + "\n")
    if show:
        print(f"\nresults: {path}")
    return path


def report(options: Options, body: str, rounds: list[Round], before: str = "", after: str = "") -> None:
    """The summary printed after the rounds: the setup (between ``before`` and ``after``),
    ``body`` (the table), the contention note."""
    print()
    print(f"{before}{options.connections} connections, {options.threads} wrk thread(s), "
          f"{options.duration:.0f} s per target, {options.rounds} round(s) (median), "
          f"pinning: {PINNING if options.pin else 'off'}{after}")
    print(body)
    warning = contention_warning(rounds)
    if warning:
        print(warning)


def guarded(run: Callable[[Options], int], options: Options) -> int:
    """``run(options)``, a void run reported as exit status 1 and Ctrl-C as 130."""
    try:
        return run(options)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every process started by the bench was stopped", file=sys.stderr)
        return 130
