"""Orchestration of 2 calls: the gateway against the naive aiohttp gather-and-merge handler, same run.

Targets, each measured in the same run (compare the ratio, not absolute numbers across runs):

    naive    wrk -> bench/naive_orchestrator.py (asyncio.gather of 2 session.get, merge; uvloop) -> nginx x2
    gateway  wrk -> `gateway run` (one route, 2 independent [[routes.steps]]) -> nginx x2

Both answer ``GET /dashboard/1`` with ``{"user": <nginx /users/1>, "orders": <nginx /orders?user=1>}``;
the two upstream endpoints are static JSON served by one nginx. Goal: gateway/naive >= 1.5x.

Same wrk options, pinning (server under test alone on CPU 1; wrk + nginx on CPU 0), interleaved
rounds and CPU accounting as bench/run.py (both use bench/harness.py). With ``--baseline-rev REV``
the gateway as of git revision REV (a temporary worktree) is measured too, as gateway@REV in
every round, with the same config. See README.md.

    .venv/bin/python bench/orchestration.py [--quick] [--duration 10] [--rounds 3] [--profile]
                                            [--baseline-rev REV]
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections import Counter
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # `python bench/orchestration.py` too
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness, measuring

USER = {"id": 1, "name": "Ada", "city": "London"}
ORDERS = [{"id": 101, "total": 12.5}]
EXPECTED = {"user": USER, "orders": ORDERS}
PATH = "/dashboard/1"
GOAL = 1.5  # the gateway/naive throughput we aim for
PROFILE_SECONDS = 6
PROFILE_TOP = 30


def parse_args(argv: Sequence[str] | None) -> harness.Options:
    """The options of bench/run.py (same defaults); ``--profile`` records py-spy raw samples."""
    return harness.parse_options(
        argv, __doc__, "measure every target N times, interleaved; report medians (default 3)",
        f"afterwards, py-spy --native every target for {PROFILE_SECONDS} s under load and print self time per frame",
    )


# -- starting and checking the targets -------------------------------------------------------


def start_all(session: harness.Session, nginx: str) -> dict[str, harness.Service]:
    """nginx with two static JSON endpoints (/users/1 and /orders, any query string), then the
    naive handler and the gateway (and its baseline, when there is one)."""
    services = session.services
    locations = harness.static_json({"= /users/1": USER, "= /orders": ORDERS},
                                    """location / { return 404 '{"error":"not found"}'; }""")
    upstream = harness.start_nginx(services, nginx, "upstream", locations, "/users/1")
    out: dict[str, harness.Service] = {}
    port = harness.free_port()
    out["naive"] = services.start(
        "naive", [sys.executable, str(Path(__file__).with_name("naive_orchestrator.py")),
                  "--listen", f"127.0.0.1:{port}", "--upstream", upstream.origin],
        f"http://127.0.0.1:{port}{PATH}", harness.SERVER_CPU)
    config = harness.gateway_config(session.workdir, "orchestration", "gateway", upstream=upstream.origin)
    for code in session.codes:
        out["gateway" + code.suffix] = harness.start_gateway(services, "gateway" + code.suffix, config, PATH, code)
    return out


def answer(service: harness.Service) -> Any:
    """The parsed JSON of one GET; 200 required."""
    status, body = harness.get(service)
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if status != 200 or parsed is None:
        raise harness.BenchError(f"{service.name}: GET {service.url} answered {status} {body[:200]!r}")
    return parsed


def verify_same(targets: dict[str, harness.Service]) -> None:
    """Before measuring: every target answers the same JSON, which is the expected merge."""
    answers = {name: answer(service) for name, service in targets.items()}
    if any(value != EXPECTED for value in answers.values()):
        shown = "\n".join(f"  {name}: {json.dumps(value)}" for name, value in answers.items())
        raise harness.BenchError(f"the targets do not answer the same JSON (expected {json.dumps(EXPECTED)}):\n{shown}")
    every = "both" if len(targets) == 2 else "all"
    print(f"{every} targets answer {json.dumps(EXPECTED, separators=(',', ':'))}", flush=True)


def check_answer(service: harness.Service) -> None:
    """Before every pass: the answer is still the expected merge."""
    if (body := answer(service)) != EXPECTED:
        raise harness.BenchError(f"{service.name}: the answer changed: {json.dumps(body)}")


def ratios(rounds: list[measuring.Round], baseline: str = "") -> dict[str, float]:
    """Within each round, then the median over rounds (as bench/run.py); with a ``baseline``
    suffix also the baseline against naive and the gateway against its baseline."""
    out = {
        "gateway/naive": measuring.throughput_ratio(rounds, "gateway", "naive"),
        "gateway/naive (CPU cost)": measuring.cost_ratio(rounds, "gateway", "naive"),
    }
    if baseline:
        out.update(measuring.baseline_ratios(rounds, ["gateway"], baseline, "naive"))
    return out


# -- profiling (optional) --------------------------------------------------------------------


def record(service: harness.Service, options: harness.Options, script: Path) -> Path:
    """py-spy --native raw samples of ``service`` under the same wrk load (not a measured pass)."""
    out = harness.RESULTS_DIR / f"{options.stamp}-orchestration-{service.name}.raw"
    return measuring.py_spy(service, options, script, PROFILE_SECONDS, out, ["--native", "--format", "raw"])


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


def summary_table(best: dict[str, measuring.Sample], ratio: dict[str, float]) -> str:
    verdict = "met" if ratio["gateway/naive"] >= GOAL else "NOT met"
    return measuring.table(best, ratio, 10, 26) + f"\ngoal gateway/naive >= {GOAL}x: {verdict}"


def versions() -> dict[str, str]:
    out = {}
    for package in ("aiohttp", "uvloop", "httptools"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


# -- main ------------------------------------------------------------------------------------


Profiles = dict[str, dict[str, Any]]


def measure_all(options: harness.Options, nginx: str) -> tuple[list[measuring.Round], Profiles, harness.Codes]:
    """Start every process, check, measure (and profile); stop everything we started."""
    profiles: Profiles = {}
    with harness.session("gateway-bench-orch-", options.pin, options.baseline_rev) as session:
        targets = start_all(session, nginx)
        verify_same(targets)
        rounds = measuring.run_rounds(targets, options, session.script, check_answer, alternate=True)
        if options.profile:
            for name, service in targets.items():
                raw = record(service, options, session.script)
                profiles[name] = {"raw": str(raw), **summarize(raw)}
        return rounds, profiles, session.codes


def run(options: harness.Options) -> int:
    nginx = harness.ensure_tools()
    info = {**measuring.machine(), "versions": versions(), "commit": harness.code_version()}
    rounds, profiles, codes = measure_all(options, nginx)
    info.update(measuring.baseline_info(codes))
    best = {name: measuring.median_sample(rounds, name) for name in rounds[0]}
    ratio = ratios(rounds, codes[-1].suffix)
    measured = f"; gateway at {info['commit']}" + (f", baseline {codes[-1].label()}" if len(codes) > 1 else "")
    measuring.report(options, summary_table(best, ratio), rounds, f"GET {PATH}: 2 upstream calls merged; ", measured)
    for name, summary in profiles.items():
        print()
        print(show_profile(name, summary))
    data = measuring.results_data(options, rounds, ratio, info, benchmark="orchestration of 2 independent calls",
                                path=PATH, expected=EXPECTED)
    measuring.write_json(f"{options.stamp}-orchestration.json", {**data, "goal": GOAL, "profiles": profiles}, show=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return measuring.guarded(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
