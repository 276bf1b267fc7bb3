"""The gateway's memory under three kinds of pressure, measured on one `gateway run` process:

    idle      N idle kept-alive client connections (default 10,000): RSS while they are held,
              and requests still served on new and on held connections      goal: RSS < 300 MB
    soak      wrk at saturation for S seconds (default 600) against a full-chain route (global
              request_id; api_key, rate_limit, headers, cors) and an orchestration route, half
              each: RSS sampled every 5 s, growth after the warm-up, errors  goal: < 10 %, 0 errors
    stream    1 GiB uploaded and 1 GiB downloaded through the gateway       goal: peak RSS < 100 MB

    .venv/bin/python -m bench.resources [idle] [soak] [stream] [--connections N] [--soak-seconds S]
                                        [--stream-bytes B]

The upstreams: nginx (static JSON) for the proxied and orchestrated routes, a small aiohttp
server (bench/bulk_upstream.py) that discards uploads and streams downloads. The gateway's config
is bench/configs/resources.toml. Results are printed and written to bench/results/<stamp>-resources.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # `python bench/resources.py` too
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness, measuring

KEY = "bench-key"
USER = '{"id":1,"name":"Ada","city":"London"}'
ORDERS = '{"orders":[{"id":7,"total":12.5},{"id":9,"total":3.0}]}'
MIB = 1024 * 1024


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (``VmRSS``) or its peak so far (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise harness.BenchError(f"no {field} for pid {pid}")


def start(services: harness.Services, nginx: str, connections: int) -> tuple[harness.Service, str]:
    """nginx and the bulk upstream on CPU 0, the gateway on CPU 1; the gateway and its HOST:PORT."""
    locations = harness.static_json({"= /users/1": USER, "= /orders": ORDERS})
    upstream = harness.start_nginx(services, nginx, "nginx", locations, "/users/1")
    bulk_port = harness.free_port()
    bulk = services.start("bulk", [sys.executable, str(Path(__file__).with_name("bulk_upstream.py")),
                                   "--port", str(bulk_port)],
                          f"http://127.0.0.1:{bulk_port}/ready", harness.LOAD_CPU)
    config = harness.gateway_config(services.workdir, "resources", "gateway", nginx=upstream.origin,
                                    bulk=bulk.origin, max_connections=connections + 1000, api_key=KEY)
    gateway = harness.start_gateway(services, "gateway", config, "/", ready_on_admin=True)
    return gateway, gateway.origin.removeprefix("http://")


# -- idle connections ---------------------------------------------------------------------------


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nX-API-Key: {KEY}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def idle(gateway: harness.Service, address: str, count: int) -> dict[str, Any]:
    host, port = address.rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    before = rss_bytes(gateway.process.pid)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    start = time.monotonic()
    try:
        for first in range(0, count, 250):
            batch = await asyncio.gather(*(asyncio.open_connection(host, int(port))
                                           for _ in range(min(250, count - first))))
            statuses = await asyncio.gather(*(_exchange(r, w, "/api/x") for r, w in batch))
            if any(s != 200 for s in statuses):
                raise harness.BenchError(f"idle: a request answered {sorted(set(statuses))}")
            held.extend(batch)
        opened = time.monotonic() - start
        await asyncio.sleep(5)  # let the gateway settle with every connection idle
        held_rss = rss_bytes(gateway.process.pid)
        reader, writer = await asyncio.open_connection(host, int(port))
        fresh = await _exchange(reader, writer, "/api/fresh")
        writer.close()
        sample = held[:: max(1, count // 100)]
        again = await asyncio.gather(*(_exchange(r, w, "/api/again") for r, w in sample))
        open_now = sum(1 for r, _ in held if not r.at_eof())
    finally:
        for _, writer in held:
            writer.close()
    return {
        "connections": count, "seconds_to_open": round(opened, 1), "rss_before_mb": before / MIB,
        "rss_held_mb": held_rss / MIB, "fresh_status": fresh, "held_statuses_ok": again.count(200),
        "held_sampled": len(sample), "still_open": open_now,
        "ok": held_rss < 300 * MIB and fresh == 200 and all(s == 200 for s in again) and open_now == count,
    }


# -- soak --------------------------------------------------------------------------------------


SOAK_LUA = f"""
local n = 0
request = function()
  n = n + 1
  if n % 2 == 0 then
    return wrk.format("GET", "/dashboard/7", {{["Host"] = "bench"}})
  end
  return wrk.format("GET", "/api/items/42", {{["Host"] = "bench", ["X-API-Key"] = "{KEY}",
                                               ["Origin"] = "https://app.example"}})
end
""" + harness.WRK_DONE_LUA


def soak(gateway: harness.Service, address: str, seconds: int, workdir: Path) -> dict[str, Any]:
    script = workdir / "soak.lua"
    script.write_text(SOAK_LUA)
    command = ["taskset", "-c", "0", "wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", "-s", str(script),
               f"http://{address}/"]
    samples: list[tuple[float, int]] = []
    start = time.monotonic()
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as wrk:
        while wrk.poll() is None:
            samples.append((round(time.monotonic() - start, 1), rss_bytes(gateway.process.pid)))
            with contextlib.suppress(subprocess.TimeoutExpired):
                wrk.wait(5)
        out = wrk.stdout.read() if wrk.stdout is not None else ""
    result = measuring.wrk_result(out)
    if result is None:
        raise harness.BenchError(f"wrk failed:\n{out}")
    warm = [rss for t, rss in samples if t >= min(60.0, seconds / 5)]
    after_warmup, last, peak = warm[0], warm[-1], max(warm)
    errors = measuring.wrk_errors(result)
    growth = (last - after_warmup) / after_warmup
    return {
        "seconds": seconds, "requests": result["requests"], "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p99_ms": result["p99_us"] / 1000, "errors": errors, "rss_after_warmup_mb": after_warmup / MIB,
        "rss_end_mb": last / MIB, "rss_peak_mb": peak / MIB, "growth_after_warmup": round(growth, 4),
        "rss_samples_mb": [(t, round(rss / MIB, 1)) for t, rss in samples],
        "ok": not errors and growth < 0.10,
    }


# -- streaming -----------------------------------------------------------------------------------


def stream(gateway: harness.Service, address: str, size: int, workdir: Path) -> dict[str, Any]:
    base = f"http://{address}/bulk"
    payload = workdir / "payload.bin"
    with payload.open("wb") as out:
        out.truncate(size)  # sparse: zeros that cost no disk
    before = rss_bytes(gateway.process.pid)
    start = time.monotonic()
    up = subprocess.run(["curl", "-sS", "-X", "POST", "-T", str(payload), "-H", "Expect:", f"{base}/sink"],
                        capture_output=True, text=True, timeout=600, check=False)
    up_seconds = time.monotonic() - start
    start = time.monotonic()
    down = subprocess.run(["bash", "-c", f"curl -sS {base}/source?bytes={size} | wc -c"],
                          capture_output=True, text=True, timeout=600, check=False)
    down_seconds = time.monotonic() - start
    peak = rss_bytes(gateway.process.pid, "VmHWM")
    try:
        received = json.loads(up.stdout).get("received")
    except ValueError:
        raise harness.BenchError(f"upload failed ({up.returncode}): {up.stdout[:300]} {up.stderr[:300]}") from None
    downloaded = int(down.stdout.strip() or 0)
    return {
        "bytes_each_way": size, "uploaded_received_by_upstream": received, "downloaded": downloaded,
        "upload_mib_s": round(size / MIB / up_seconds), "download_mib_s": round(size / MIB / down_seconds),
        "rss_before_mb": before / MIB, "peak_rss_mb": peak / MIB,
        "ok": received == size and downloaded == size and peak < 100 * MIB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", choices=["idle", "soak", "stream", []], default=[])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--soak-seconds", type=int, default=600)
    parser.add_argument("--stream-bytes", type=int, default=1024 * MIB)
    args = parser.parse_args()
    parts = args.parts or ["stream", "idle", "soak"]
    nginx = harness.ensure_tools()
    results: dict[str, Any] = {}
    with harness.session("gateway-resources-", pin=True) as session:
        gateway, address = start(session.services, nginx, args.connections)
        for part in parts:
            print(f"{part} ...", flush=True)
            if part == "stream":
                results[part] = stream(gateway, address, args.stream_bytes, session.workdir)
            elif part == "idle":
                results[part] = asyncio.run(idle(gateway, address, args.connections))
            else:
                results[part] = soak(gateway, address, args.soak_seconds, session.workdir)
            shown = {k: v for k, v in results[part].items() if k != "rss_samples_mb"}
            print(f"  {json.dumps(shown)}", flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    measuring.write_json(f"{stamp}-resources.json", results)
    failed = [part for part, result in results.items() if not result["ok"]]
    print("all goals met" if not failed else f"goals missed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
