"""The ``process_*`` families (docs/operations.md#metrics): memory, CPU, open files of the
gateway's processes.

One process: prometheus-client's ProcessCollector in the gateway's registry, read at each
scrape. With ``workers > 1`` the supervisor's /metrics is merged from the workers' files, where
a collector cannot reach: each worker copies its own figures, under the label ``worker``, into
multiprocess-mode metrics every few seconds (memory and descriptors as live gauges, so a dead
worker's series goes with it; CPU as a counter advanced by what the worker used).
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

REFRESH_EVERY = 5.0  # seconds between a worker's copies
_GAUGES = {  # name: help (ProcessCollector's names)
    "process_resident_memory_bytes": "Resident memory size in bytes.",
    "process_virtual_memory_bytes": "Virtual memory size in bytes.",
    "process_open_fds": "Number of open file descriptors.",
    "process_max_fds": "Maximum number of open file descriptors.",
    "process_start_time_seconds": "Start time of the process since unix epoch in seconds.",
}


def add_process_collector(registry: CollectorRegistry) -> None:
    """process_* of this process, read from /proc at each scrape (single-process mode)."""
    ProcessCollector(registry=registry)


class WorkerProcessMetrics:
    """This worker's process_* figures, copied into the multiprocess files with ``worker``."""

    def __init__(self, worker: str, registry: CollectorRegistry) -> None:
        self.worker = worker
        self._source = ProcessCollector(registry=None)
        self._gauges = {name: Gauge(name, text, ["worker"], multiprocess_mode="livemax", registry=registry)
                        .labels(worker) for name, text in _GAUGES.items()}
        self._cpu = Counter("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
                            ["worker"], registry=registry).labels(worker)
        self._cpu_seen = 0.0

    def refresh(self) -> None:
        for family in self._source.collect():
            value = family.samples[0].value if family.samples else None
            if value is None:
                continue
            if family.name == "process_cpu_seconds":
                if value > self._cpu_seen:
                    self._cpu.inc(value - self._cpu_seen)
                    self._cpu_seen = value
            elif family.name in self._gauges:
                self._gauges[family.name].set(value)

    async def refresh_forever(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.refresh()
            await asyncio.sleep(REFRESH_EVERY)
