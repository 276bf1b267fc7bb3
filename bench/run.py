"""Throughput and latency of the gateway against same-run baselines, measured with wrk.

Targets, each measured in the same run (the machine is shared and noisy: compare ratios
against baselines of the same run, not absolute numbers across runs):

    direct           wrk -> nginx (static JSON, keep-alive)
    naive            wrk -> bench/naive_proxy.py (30-line aiohttp proxy, uvloop) -> nginx
    gateway_bare     wrk -> `gateway run` (one route, no plugins) -> nginx
    gateway_plugins  wrk -> `gateway run` (request_id + headers plugins) -> nginx

Pinning (when taskset exists and there are >= 2 CPUs): each proxy under test alone on CPU 1;
wrk and the nginx upstream share CPU 0 (so `direct` is wrk and nginx on one core). See README.md.

With ``--baseline-rev REV`` the gateway as of git revision REV (a temporary worktree) is measured
too, as gateway_bare@REV and gateway_plugins@REV in every round, with the same configs.

    .venv/bin/python bench/run.py [--duration 10] [--quick] [--connections 50] [--rounds 3] [--profile]
                                  [--baseline-rev REV]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # `python bench/run.py` too
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness, measuring

BODY = '{"id":42,"name":"benchmark","tags":["a","b","c"],"active":true,"score":3.14,"note":"static upstream"}'
PATH = "/api/items/42?view=full"
GATEWAYS = ("gateway_bare", "gateway_plugins")  # also the names of their configs in bench/configs/
RATIOS = {  # name: (numerator, denominator), throughput
    "gateway_bare/naive": ("gateway_bare", "naive"),
    "gateway_plugins/naive": ("gateway_plugins", "naive"),
    "gateway_plugins/gateway_bare": ("gateway_plugins", "gateway_bare"),
    "naive/direct": ("naive", "direct"),
}


def parse_args(argv: Sequence[str] | None) -> harness.Options:
    return harness.parse_options(
        argv, __doc__, "measure all targets N times, interleaved; report medians (default 3)",
        "afterwards, record py-spy flame graphs of the gateway targets under load",
    )


# -- starting the targets --------------------------------------------------------------------


def start_all(session: harness.Session, nginx: str) -> dict[str, harness.Service]:
    """direct, naive, then each gateway target followed by its baseline (when there is one)."""
    services = session.services
    direct = harness.start_nginx(services, nginx, "direct", harness.static_json({"/": BODY}), PATH)
    out = {"direct": direct}
    port = harness.free_port()
    out["naive"] = services.start(
        "naive", [sys.executable, str(Path(__file__).with_name("naive_proxy.py")), "--listen", f"127.0.0.1:{port}",
                  "--upstream", direct.origin],
        f"http://127.0.0.1:{port}{PATH}", harness.SERVER_CPU)
    for name in GATEWAYS:
        config = harness.gateway_config(session.workdir, name, name, upstream=direct.origin)
        for code in session.codes:
            out[name + code.suffix] = harness.start_gateway(services, name + code.suffix, config, PATH, code)
    return out


def verify(service: harness.Service) -> None:
    """One request before measuring: must be 200 with nginx's body."""
    status, body = harness.get(service)
    if status != 200 or json.loads(body) != json.loads(BODY):
        raise harness.BenchError(f"{service.name}: GET {service.url} answered {status} {body[:200]!r}")


# -- measuring -------------------------------------------------------------------------------


def ratios(rounds: list[measuring.Round], baseline: str = "") -> dict[str, float]:
    """Each ratio taken within a round (same minute, same noise), then the median over rounds.

    Throughput ratios for every pair of RATIOS; for the gateway also the CPU-cost ratio
    (naive CPU us/req over gateway CPU us/req: above 1 means the gateway is cheaper per request).
    With a ``baseline`` suffix, the same against naive for the baseline targets, and each gateway
    target over its baseline.
    """
    out = {key: measuring.throughput_ratio(rounds, top, bottom) for key, (top, bottom) in RATIOS.items()}
    for name in GATEWAYS:
        out[f"{name}/naive (CPU cost)"] = measuring.cost_ratio(rounds, name, "naive")
    if baseline:
        out.update(measuring.baseline_ratios(rounds, GATEWAYS, baseline, "naive"))
    return out


# -- main ------------------------------------------------------------------------------------


def measure_all(options: harness.Options, nginx: str) -> tuple[list[measuring.Round], list[Path], harness.Codes]:
    """Start every target, measure the rounds (and profile), stop everything we started."""
    with harness.session("gateway-bench-", options.pin, options.baseline_rev) as session:
        targets = start_all(session, nginx)
        rounds = measuring.run_rounds(targets, options, session.script, verify)
        seconds = max(1, round(options.duration))
        flames = [
            measuring.py_spy(service, options, session.script, seconds,
                           harness.RESULTS_DIR / f"{options.stamp}-{name}.svg", ["--rate", "200"])
            for name, service in targets.items() if name.startswith("gateway")
        ] if options.profile else []
        return rounds, flames, session.codes


def run(options: harness.Options) -> int:
    nginx = harness.ensure_tools()
    info = measuring.machine()
    rounds, flames, codes = measure_all(options, nginx)
    best = {name: measuring.median_sample(rounds, name) for name in rounds[0]}
    ratio = ratios(rounds, codes[-1].suffix)
    measuring.report(options, measuring.table(best, ratio, 16, 36), rounds)
    data = measuring.results_data(options, rounds, ratio, {**info, **measuring.baseline_info(codes)})
    measuring.write_json(f"{options.stamp}.json", data, show=True)
    for flame in flames:
        print(f"flame graph: {flame}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return measuring.guarded(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
