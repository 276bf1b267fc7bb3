"""What observability costs per request, against the same gateway with it off, in one run.

Targets (bench/run.py's gateway_plugins route: request_id + headers plugins, nginx upstream):

    off          no access log, no span export: trace context is only propagated
    access_log   [gateway.access_log], JSON lines to a file
    tracing_1    [gateway.tracing] sample_ratio = 1.0: every request's spans exported
    tracing_001  [gateway.tracing] sample_ratio = 0.01

The collector is nginx answering 200 to every POST /v1/traces (a real OTLP/HTTP endpoint that
costs the gateway what a fast collector would). Rounds are interleaved, ratios taken within a
round, medians reported. Goals: access log <= 5 %, tracing at 1 % sampling <= 5 %.

Propagation alone (what every request pays without ``[gateway.tracing]``) is too small for wrk
to see through the noise; it is timed in this process instead: the exact operations the edge,
the chain and the upstream stack add per request, against a loop that does none of them.
Goal: < 2 us per request.

    .venv/bin/python bench/observability.py [--quick] [--rounds 3] [--duration 10] [--connections 50]
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # `python bench/observability.py` too
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness, measuring

BODY = '{"id":42,"name":"benchmark","tags":["a","b","c"],"active":true,"score":3.14,"note":"static upstream"}'
PATH = "/api/items/42?view=full"
TARGETS = ("off", "access_log", "tracing_1", "tracing_001")


def parse_args(argv: Sequence[str] | None) -> harness.Options:
    return harness.parse_options(argv, __doc__, "measure all targets N times, interleaved; report medians (default 3)",
                                 "afterwards, record py-spy flame graphs of the gateway targets under load")


def settings(name: str, workdir: Path, collector: str) -> str:
    if name == "access_log":
        return f'[gateway.access_log]\npath = "{workdir / "access.log"}"'
    if name.startswith("tracing_"):
        ratio = "1.0" if name == "tracing_1" else "0.01"
        return f'[gateway.tracing]\nendpoint = "{collector}"\nsample_ratio = {ratio}'
    return ""


def start_all(session: harness.Session, nginx: str) -> dict[str, harness.Service]:
    services = session.services
    locations = harness.static_json({"/": BODY}, "location /v1/traces { return 200; }")
    upstream = harness.start_nginx(services, nginx, "nginx", locations, PATH)
    collector = upstream.origin  # the same nginx takes the spans
    out = {}
    for name in TARGETS:
        config = harness.gateway_config(session.workdir, "observability", name, upstream=upstream.origin,
                                        settings=settings(name, session.workdir, collector))
        out[name] = harness.start_gateway(services, name, config, PATH)
    return out


def verify(service: harness.Service) -> None:
    status, body = harness.get(service)
    if status != 200 or json.loads(body) != json.loads(BODY):
        raise harness.BenchError(f"{service.name}: GET {service.url} answered {status} {body[:200]!r}")


def propagation_cost(rounds: int = 7, requests: int = 100_000) -> tuple[float, float]:
    """Microseconds per request, as the gateway spends them with no exporter and no access log,
    of (1) trace propagation: reading the caller's ``traceparent`` (half the requests bring one)
    or starting a trace, and the ``traceparent`` of one upstream attempt with its own span id;
    (2) the request scope that every log line reads its request id and route from: opening and
    closing it, and the look-ups of the chain's two plugin hops and the upstream attempt."""
    from multidict import CIMultiDict

    from gateway import request_scope
    from gateway.request_scope import RequestScope
    from gateway.trace_context import incoming_fields
    from gateway.upstream.request import UpstreamRequest
    from gateway.upstream.stack import _propagate

    continued = CIMultiDict({"Host": "x", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    fresh: CIMultiDict[str] = CIMultiDict({"Host": "x"})
    call = UpstreamRequest("GET", "/a", CIMultiDict(), None, route="r", upstream="u", deadline=0.0)
    call.target = "http://127.0.0.1:1"
    fields = incoming_fields(None, None, 0.0)

    def baseline(n: int) -> object:  # what every pass does besides the work measured
        headers = continued if n & 1 else fresh  # half the requests continue a trace
        return headers.get("traceparent"), headers.get("tracestate")

    def allocation(n: int) -> RequestScope:  # the scope object alone
        baseline(n)
        return RequestScope("id", fields, None)

    def propagation(n: int) -> None:
        headers = continued if n & 1 else fresh
        _propagate(RequestScope("id", incoming_fields(headers.get("traceparent"), headers.get("tracestate"), 0.0),
                                None), call)

    def scope(n: int) -> None:
        token = request_scope.enter(allocation(n))
        for _ in range(3):  # two plugin hops and the upstream attempt look for the scope
            request_scope.current()
        request_scope.leave(token)

    def fastest(step: Callable[[int], object]) -> float:
        """Microseconds per call of ``step``: the fastest of several passes, least disturbed by
        whatever else the machine does (as timeit reports)."""
        passes = []
        for _ in range(rounds):
            start = time.perf_counter()
            for n in range(requests):
                step(n)
            passes.append(time.perf_counter() - start)
        return min(passes) / requests * 1e6

    # The garbage collector is off while timing, as timeit does: what it costs depends on the
    # whole heap (the gateway freezes its start-up objects and collects rarely, see
    # docs/architecture.md), not on these operations.
    gc.disable()
    try:
        base, alloc = fastest(baseline), fastest(allocation)
        return fastest(propagation) - alloc, fastest(scope) - base
    finally:
        gc.enable()


def ratios(rounds: list[measuring.Round]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in TARGETS[1:]:
        out[f"{name}/off"] = measuring.throughput_ratio(rounds, name, "off")
        out[f"{name}/off (CPU cost)"] = measuring.cost_ratio(rounds, name, "off")
    return out


def run(options: harness.Options) -> int:
    nginx = harness.ensure_tools()
    info = measuring.machine()
    propagation, scope_cost = propagation_cost()
    with harness.session("gateway-observability-", options.pin) as session:
        targets = start_all(session, nginx)
        rounds = measuring.run_rounds(targets, options, session.script, verify, alternate=True)
    best = {name: measuring.median_sample(rounds, name) for name in rounds[0]}
    ratio = ratios(rounds)
    cpu = {name: best[name].cpu_us_per_request for name in TARGETS}
    extra = "\n".join(
        [f"propagation only (in process): {propagation:.2f} us/request (goal < 2)",
         f"request scope for log context (in process): {scope_cost:.2f} us/request"]
        + [f"{name}: +{(1 / ratio[f'{name}/off'] - 1) * 100:.1f} % time per request at the same load, "
           f"CPU {cpu[name] - cpu['off']:+.1f} us/request" for name in TARGETS[1:]]
    )
    measuring.report(options, measuring.table(best, ratio, 12, 28), rounds)
    print(extra)
    data = measuring.results_data(options, rounds, ratio,
                                  {**info, "propagation_us": propagation, "request_scope_us": scope_cost})
    measuring.write_json(f"{options.stamp}-observability.json", data, show=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return measuring.guarded(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
