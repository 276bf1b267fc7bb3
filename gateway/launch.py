"""Launching one gateway process: its event loop, start-up failures, SIGTERM/SIGINT (drain)
and SIGHUP (reload).

A process that cannot start (a port in use, a plugin that cannot start) says why in one line
on stderr and exits 1: no traceback, nothing left open behind it."""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from gateway.config_load import ConfigError, LoadedConfig
from gateway.process import GatewayProcess
from gateway.process_metrics import WorkerProcessMetrics
from gateway.watch import watch_file

log = logging.getLogger("gateway")


class StartupError(Exception):
    """The process cannot start; the message says why, in one line."""


def listen_failure(exc: OSError, address: str, option: str) -> StartupError | None:
    """A one-line StartupError when ``exc`` is a failure to listen on ``address`` (given by
    ``option``, e.g. "--listen" or "gateway.listen"), else None."""
    if isinstance(exc, socket.gaierror):
        why = "unknown host name"
    elif exc.errno == errno.EADDRINUSE:
        why = "address already in use (is another gateway or server running on that port?)"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        port = address.rpartition(":")[2]
        low = port.isdigit() and 0 < int(port) < 1024
        why = "permission denied" + (" (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if low else "")
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "address not available (no interface of this host has that IP address)"
    else:
        return None
    return StartupError(f"cannot listen on {address} ({option}): {why}")


def listen_option(args: argparse.Namespace, *, admin: bool) -> str:
    """Where a listen address came from, as a start-up error names it: the option or the key."""
    if admin:
        return "--admin-listen" if args.admin_listen is not None else "gateway.admin_listen"
    return "--listen" if args.listen else "gateway.listen"


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
    return run_main(lambda: serve_until_signal(loaded, args))


def run_main(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run ``main`` on the gateway's event loop; a start-up failure is reported in one line
    (per config problem) on stderr with exit code 1, never a traceback."""
    try:
        with event_loop_runner() as runner:
            return runner.run(main())
    except ConfigError as exc:  # a plugin refused its options when built
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    except StartupError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        return 130


async def start_process(loaded: LoadedConfig, args: argparse.Namespace) -> GatewayProcess:
    """A started GatewayProcess, or StartupError / ConfigError with nothing left open."""
    try:
        process = GatewayProcess(
            loaded,
            listen=args.listen,
            admin_listen=args.admin_listen,
            reuse_port=args.reuse_port,
            count_reloads=not args.supervised,
        )
    except ConfigError:
        raise
    except Exception as exc:  # a plugin that cannot be built
        log.debug("start-up failed", exc_info=True)
        raise StartupError(f"start-up failed: {one_line(exc)}") from None
    try:
        await process.start()
    except Exception as exc:
        log.debug("start-up failed", exc_info=True)
        error = _startup_error(exc, process, args)
        try:
            await process.drain()  # closes what start() opened: listeners, client session, plugins
        except Exception:
            log.debug("clean-up after a failed start-up failed", exc_info=True)
        raise error from None
    return process


def _startup_error(exc: Exception, process: GatewayProcess, args: argparse.Namespace) -> Exception:
    if isinstance(exc, (ConfigError, StartupError)):
        return exc
    if isinstance(exc, OSError):
        admin = bool(process.addresses())  # the public listener is opened first: it is not open yet
        address = process.admin_listen if admin else process.listen
        failure = listen_failure(exc, address, listen_option(args, admin=admin))
        if failure is not None:
            return failure
    return StartupError(f"start-up failed: {one_line(exc)}")


async def serve_until_signal(loaded: LoadedConfig, args: argparse.Namespace) -> int:
    process = await start_process(loaded, args)
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
    if args.worker is not None:  # its process_* figures reach the supervisor's /metrics
        figures = WorkerProcessMetrics(args.worker, process.metrics.registry)
        background.append(loop.create_task(figures.refresh_forever()))
    await stop.wait()
    for task in background:
        task.cancel()
    log.info("draining: no new connections, finishing requests in flight")
    await process.drain()
    log.info("stopped")
    return 0
