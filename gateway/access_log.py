"""The access log (docs/operations.md#access-log): one line per request, written after the
response, as JSON or text, to stdout or a file.

Lines are buffered in memory and written by one background thread, flushed every
``FLUSH_EVERY`` seconds, when ``FLUSH_BYTES`` are waiting, and at shutdown: a slow disk
never slows a request. While a write is stuck, up to ``MAX_PENDING`` bytes wait; beyond
that, lines are dropped and counted (``gateway_access_log_dropped_total``) rather than
growing memory without bound. Every write holds whole lines (at most ``PIPE_BUF`` bytes per
write to a pipe or terminal), so workers sharing a file or stdout never interleave mid-line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import orjson

if TYPE_CHECKING:
    from gateway.config_model import AccessLogConfig

log = logging.getLogger("gateway.access_log")

FLUSH_EVERY = 0.5  # seconds
FLUSH_BYTES = 64 * 1024
MAX_PENDING = 16 * 1024 * 1024
PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are never interleaved
MAX_FIELD = 1024  # characters kept of a client-chosen field (path, user agent)
REDACTED = "<redacted>"
# Query parameters whose values never reach the log, by name (case-insensitive, substring).
SECRET_PARAM_WORDS = ("key", "token", "secret", "password", "signature")

# The fields of a line, in order (docs/operations.md#access-log).
FIELDS = ("ts", "request_id", "trace_id", "route", "method", "path", "status", "source", "duration_ms",
          "upstream", "upstream_status", "upstream_ms", "attempts", "bytes_in", "bytes_out", "client_ip",
          "consumer", "user_agent", "cache")


def redact_query(query: str, secret_names: frozenset[str]) -> str:
    """``query`` with the value of every credential-like parameter replaced by <redacted>:
    the names in ``secret_names`` (lower case) and names containing a SECRET_PARAM_WORDS word."""
    parts = []
    for part in query.split("&"):
        name = part.partition("=")[0]
        plain = unquote_plus(name).lower()
        if plain in secret_names or any(word in plain for word in SECRET_PARAM_WORDS):
            parts.append(f"{name}={REDACTED}")
        else:
            parts.append(part)
    return "&".join(parts)


def clip(value: str | None) -> str | None:
    if value is None or len(value) <= MAX_FIELD:
        return value
    return value[:MAX_FIELD] + "..."


class _Clock:
    """RFC 3339 UTC timestamps with milliseconds; the part up to the second made once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"


def json_line(entry: dict[str, Any]) -> bytes:
    """One JSON object and a newline, UTF-8 (orjson: a tenth of the json module's time)."""
    try:
        return orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:  # a lone surrogate (undecodable client bytes): escape it
        return (json.dumps(entry, separators=(",", ":")) + "\n").encode()


def _text_value(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    if text and all(c.isprintable() and c not in ' "\\' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)  # quoted, with escapes: one line, unambiguous


def text_line(entry: dict[str, Any]) -> bytes:
    """``<ts> <request_id> <method> <path> <status> <duration>ms key=value ...``."""
    head = " ".join(_text_value(entry[key]) for key in ("ts", "request_id", "method", "path", "status"))
    rest = " ".join(f"{key}={_text_value(entry[key])}" for key in FIELDS
                    if key not in ("ts", "request_id", "method", "path", "status", "duration_ms") and key in entry)
    return f"{head} {entry['duration_ms']}ms {rest}\n".encode("utf-8", "backslashreplace")


class AccessLog:
    """Where one runtime's access-log lines go; ``start`` opens, ``close`` flushes and closes."""

    def __init__(self, config: AccessLogConfig, secret_params: Iterable[str] = (),
                 dropped: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.query = config.query
        self.secret_params = frozenset(name.lower() for name in secret_params)
        self._format = json_line if config.format == "json" else text_line
        self._clock = _Clock()
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._pending = 0  # bytes handed to the writer thread and not yet written
        self._fd: int | None = None
        self._own_fd = False
        self._pipe = False
        self._writer: asyncio.Task[None] | None = None
        self._writing: asyncio.Future[None] | None = None
        self._dropped = dropped
        self._loop: asyncio.AbstractEventLoop | None = None

    def timestamp(self) -> str:
        return self._clock.now()

    def path_for(self, path: str, query: str) -> str:
        """The path as logged: the query only with ``query = true``, credentials redacted."""
        if self.query and query:
            return clip(f"{path}?{redact_query(query, self.secret_params)}") or ""
        return clip(path) or ""

    def write(self, entry: dict[str, Any]) -> None:
        line = self._format(entry)
        size = len(line)
        if self._buffered + self._pending + size > MAX_PENDING:
            if self._dropped is not None:
                self._dropped(1)
            return
        self._buffer.append(line)
        self._buffered += size
        if self._buffered >= FLUSH_BYTES and self._writing is None and self._loop is not None:
            self._flush()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.config.path == "-":
            self._fd = sys.stdout.fileno()
        else:
            path = self.config.path
            self._fd = await asyncio.to_thread(os.open, path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._own_fd = True
        mode = os.fstat(self._fd).st_mode
        self._pipe = not stat.S_ISREG(mode)
        self._writer = self._loop.create_task(self._flush_forever())

    async def close(self) -> None:
        """Stop the timer, write everything still buffered (waiting for writes in flight),
        and close the file."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        while self._writing is not None or self._buffer:
            if self._writing is None:
                self._flush()
            writing = self._writing
            if writing is not None:
                with contextlib.suppress(Exception):
                    await writing
                if self._writing is writing:  # its done-callback has not run yet
                    await asyncio.sleep(0)
        if self._own_fd and self._fd is not None:
            os.close(self._fd)
        self._fd = None

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            if self._buffer and self._writing is None:
                self._flush()

    def _flush(self) -> None:
        """Hand the buffered lines to the writer thread (one write in flight at a time)."""
        lines, self._buffer = self._buffer, []
        size, self._buffered = self._buffered, 0
        self._pending += size
        assert self._loop is not None
        self._writing = self._loop.run_in_executor(None, self._write_lines, lines)
        self._writing.add_done_callback(lambda future: self._written(future, size))

    def _written(self, future: asyncio.Future[None], size: int) -> None:
        self._pending -= size
        self._writing = None
        if not future.cancelled() and future.exception() is not None:
            log.warning("access log: cannot write to %s: %s", self.config.path, future.exception())
        if self._buffered >= FLUSH_BYTES and self._loop is not None and self._fd is not None:
            self._flush()

    def _write_lines(self, lines: list[bytes]) -> None:
        fd = self._fd
        if fd is None:
            return
        for chunk in _chunks(lines, PIPE_BUF if self._pipe else 1 << 20):
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]


def _chunks(lines: list[bytes], limit: int) -> Iterable[bytes]:
    """The lines joined into byte strings of whole lines, each at most ``limit`` bytes unless
    one line alone is longer."""
    if sum(len(line) for line in lines) <= limit:
        yield b"".join(lines)
        return
    batch: list[bytes] = []
    size = 0
    for data in lines:
        if batch and size + len(data) > limit:
            yield b"".join(batch)
            batch, size = [], 0
        batch.append(data)
        size += len(data)
    if batch:
        yield b"".join(batch)
