"""Running one gateway process until SIGTERM/SIGINT, reloading on SIGHUP."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
from pathlib import Path

from gateway.config_load import LoadedConfig
from gateway.serve import GatewayProcess
from gateway.watch import watch_file

log = logging.getLogger("gateway")


def event_loop_runner() -> asyncio.Runner:
    """An asyncio runner on uvloop when it is installed (faster I/O), else the default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep running without it
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


async def _stop_when_orphaned(stop: asyncio.Event, every: float = 1.0) -> None:
    parent = os.getppid()  # polled: no portable "parent died" notification without prctl
    while True:
        await asyncio.sleep(every)
        if os.getppid() != parent:
            break
    log.warning("the supervisor is gone: draining")
    stop.set()


def run_single(loaded: LoadedConfig, args: argparse.Namespace) -> int:
    with event_loop_runner() as runner:
        return runner.run(serve_until_signal(loaded, args))


async def serve_until_signal(loaded: LoadedConfig, args: argparse.Namespace) -> int:
    process = GatewayProcess(
        loaded,
        listen=args.listen,
        admin_listen=args.admin_listen,
        reuse_port=args.reuse_port,
        count_reloads=not args.supervised,
    )
    await process.start()
    # What start-up built lives as long as the process: keep the collector from walking it
    # again and again, and let young garbage pile up a little longer between collections.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    if args.ready_file:  # tells a supervisor this worker is listening
        await asyncio.to_thread(Path(args.ready_file).touch)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[tuple[bool, str]]] = set()

    def on_hup() -> None:
        task = loop.create_task(process.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    background = []
    if args.watch and not args.supervised:  # a supervisor watches for its workers
        background.append(loop.create_task(watch_file(loaded.source, process.reload)))
    if args.supervised:  # a worker whose supervisor died (even by SIGKILL) drains and exits
        background.append(loop.create_task(_stop_when_orphaned(stop)))
    await stop.wait()
    for task in background:
        task.cancel()
    log.info("draining: no new connections, finishing requests in flight")
    await process.drain()
    log.info("stopped")
    return 0
