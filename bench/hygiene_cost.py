"""What request hygiene costs per request, in-process: path normalization (the common case of
an already-normal path and a few that need rebuilding) and the header clean-up, each against
a baseline measured in the same run (the bare `str.partition` the edge did before).

    .venv/bin/python bench/hygiene_cost.py [--rounds 7] [--loops 200000]

Reported: µs per call (median of rounds, each the mean of ``loops`` calls), and the cost
over the baseline. Target: under 3 µs for ordinary paths.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from multidict import CIMultiDict

from gateway.hygiene import clean_headers
from gateway.normalize import normalize_path, routing_form, split_target

ORDINARY = [
    "/api/users/42",
    "/dashboard/7",
    "/svc/orders/2024/11/items",
    "/static/app.v3.min.js",
    "/",
]
NEEDS_WORK = [
    "/public/%2e%2e/private/x",
    "/a//b///c/./d",
    "/caf%c3%a9/men%c3%bc",
    "/api/users/%41%42%43",
]
HEADERS = CIMultiDict([
    ("Host", "gateway.example"), ("User-Agent", "curl/8.5.0"), ("Accept", "*/*"),
    ("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"), ("X-Request-ID", "abc"),
    ("Accept-Encoding", "gzip"), ("Connection", "keep-alive"),
])


def _per_call(fn: Callable[[str], object], inputs: list[str], loops: int) -> float:
    count = len(inputs)
    start = time.perf_counter()
    for i in range(loops):
        fn(inputs[i % count])
    return (time.perf_counter() - start) / loops


def _edge(target: str) -> object:
    path, query, _ = split_target(target)
    return routing_form(normalize_path(path)), query


def _before(target: str) -> object:
    path, _, query = target.partition("?")
    return path, query


def _headers(_: str) -> object:
    return clean_headers(HEADERS, underscores="drop", peer_trusted=False)


def _headers_before(_: str) -> object:
    out = CIMultiDict(HEADERS)
    for key in [k for k in out if k[:10].lower() == "x-consumer"]:
        out.popall(key, None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--loops", type=int, default=200_000)
    args = parser.parse_args()
    cases: list[tuple[str, Callable[[str], object], list[str]]] = [
        ("baseline: partition only", _before, ORDINARY),
        ("normalize: ordinary paths", _edge, ORDINARY),
        ("normalize: paths that need work", _edge, NEEDS_WORK),
        ("baseline: headers copy + X-Consumer drop", _headers_before, ORDINARY),
        ("clean_headers (7 headers)", _headers, ORDINARY),
    ]
    results = {}
    for name, fn, inputs in cases:
        samples = [_per_call(fn, inputs, args.loops) for _ in range(args.rounds)]
        results[name] = statistics.median(samples) * 1e6
    base = results["baseline: partition only"]
    header_base = results["baseline: headers copy + X-Consumer drop"]
    for name, micros in results.items():
        over = micros - (header_base if "header" in name else base)
        print(f"{name:44s} {micros:7.3f} µs/call   (+{over:.3f} µs over its baseline)")


if __name__ == "__main__":
    main()
