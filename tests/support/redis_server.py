"""A private redis-server process for the tests that need a real Redis.

Without the binary the tests are skipped with the reason; under ``CI=true`` that is a failure
instead, because CI must not skip the Redis tests.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.ports import free_port, required_binary


def redis_binary() -> str:
    return required_binary("redis-server", package="redis-server", tests="Redis tests")


class RedisServer:
    """One redis-server process on 127.0.0.1; ``kill``/``start`` keep the same port."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._blackhole: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--protected-mode", "no"],
            stdout=(self.directory / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 5
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start:\n" + (self.directory / "redis.log").read_text())
            time.sleep(0.02)

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words: str) -> bytes:
        """Send one inline command (FLUSHALL, ...) and return the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(" ".join(words).encode() + b"\r\n")
            return sock.recv(4096)

    def kill(self) -> None:
        """SIGKILL: connections are reset, the port refuses until ``start``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts, open connections stay open, nothing ever answers."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def blackhole(self) -> None:
        """Listen on the port but never accept or answer (a hung Redis, a dropped route)."""
        self.kill()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(1024)
        self._blackhole = sock

    def end_blackhole(self) -> None:
        if self._blackhole is not None:
            self._blackhole.close()
            self._blackhole = None

    def stop(self) -> None:
        self.end_blackhole()
        self.thaw()
        self.kill()


@contextlib.contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    """A private redis-server for the length of the block (skipped, or under CI failed, without
    the binary), stopped at the end whatever the block did to it."""
    server = RedisServer(redis_binary(), directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
