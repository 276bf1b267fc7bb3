"""Client connections on the public listener: aiohttp's protocol with the limits a gateway
on the open internet needs (docs/operations.md#client-connections).

- ``header_timeout``: a request line and headers must arrive within it — from the moment a
  connection opens, or from the first byte of the next request on a kept-alive one — else
  the connection is closed (slowloris);
- ``keepalive_timeout``: an idle kept-alive connection is closed after it;
- ``max_connections``: open connections per process; a connection beyond it is closed as
  soon as it is accepted, the existing ones are untouched;
- a request the HTTP parser rejects is answered with a problem document that does not echo
  the input, counted as ``route="_malformed"``, logged in one line without header values
  and written to the access log.

Limits are read from a ``ConnectionLimits`` shared with the process, so a reload applies them
to connections opened afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from prometheus_client import Gauge

from gateway.access_log import AccessLog
from gateway.config_model import GatewaySettings
from gateway.edge import Whole
from gateway.errors import BadRequest, GatewayError, HeadersTooLarge, UriTooLong, error_response
from gateway.ids import new_request_id
from gateway.metrics import MALFORMED, RequestMetrics
from gateway.observe import malformed_entry

log = logging.getLogger("gateway.connections")
# What the parser quotes when the request line (or its target) is too long: "GET /..." or "/...".
_REQUEST_LINE = re.compile(rb"[A-Z]+ [^ :]|/|https?://", re.IGNORECASE)


@dataclass
class ConnectionLimits:
    """The public listener's limits (the current ``[gateway]`` settings, replaced on reload
    and read by connections opened afterwards) and what it counts (one per process)."""

    settings: GatewaySettings
    gauge: Gauge
    malformed: RequestMetrics
    access_log: Callable[[], AccessLog | None] = lambda: None  # the current runtime's
    open: int = 0


class ClientConnection(RequestHandler):
    """One client connection (aiohttp's RequestHandler, bounded)."""

    __slots__ = ("_limits", "_counted", "_head_timer", "_awaiting_head")

    def __init__(self, manager: web.Server, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, keepalive_timeout=limits.settings.keepalive_timeout, **kwargs)
        self._limits = limits
        self._counted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True

    # -- open, close, count -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limits = self._limits
        if limits.open >= limits.settings.max_connections:
            transport.close()  # refused: never handed to aiohttp, so never served
            self._manager = None  # connection_lost then has nothing to undo
            return
        limits.open += 1
        limits.gauge.inc()
        self._counted = True
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._limits.open -= 1
            self._limits.gauge.dec()
        self._stop_head_timer()
        super().connection_lost(exc)

    # -- header timeout ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # a request head is complete
            self._awaiting_head = False
            self._stop_head_timer()
        elif self._awaiting_head and self._head_timer is None and not self._upgraded:
            self._start_head_timer()

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        self._awaiting_head = True  # the next bytes start a new request head
        return result

    def _start_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._limits.settings.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._awaiting_head and not self._upgraded:
            log.debug("closing a connection whose request head did not arrive within %gs",
                      self._limits.settings.header_timeout)
            self.force_close()

    # -- what the parser rejects ---------------------------------------------------------

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        error = _parser_error(exc) if status != 500 else None
        if error is None:  # not the parser: the edge answers every other failure itself
            return super().handle_error(request, status, exc, message)
        log.info("malformed request from %s: %s", request.remote or "?", _reason(exc))
        request_id = new_request_id()
        response = error_response(error, MALFORMED, request_id)
        self._limits.malformed.observe("other", error.status, "gateway", 0.0, 0, len(response.body))
        out = Whole(status=response.status, headers=response.headers, body=response.body)
        out.headers["X-Request-ID"] = request_id
        out.force_close()
        access_log = self._limits.access_log()
        if access_log is not None:
            access_log.write(malformed_entry(access_log, request_id, request.remote, error.status,
                                             len(response.body)))
        return out


def _parser_error(exc: BaseException | None) -> GatewayError | None:
    """The gateway's answer to what the parser rejected; the detail never quotes the input."""
    if not isinstance(exc, HttpProcessingError):
        return None
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        line = bytes(line) if isinstance(line, (bytes, bytearray)) else str(line).encode("latin-1", "replace")
        if _REQUEST_LINE.match(line):
            return UriTooLong("the request line is too long")
        return HeadersTooLarge("a request header is too large")
    return BadRequest("the request is not valid HTTP/1.1")


def _reason(exc: BaseException | None) -> str:
    """A short, value-free description: the parser's message up to its first quote or colon."""
    text = str(getattr(exc, "message", "") or type(exc).__name__)
    for stop in (":", "'", '"', "\n"):
        text = text.split(stop, 1)[0]
    return f"{type(exc).__name__} ({text.strip()[:60]})" if text.strip() else type(exc).__name__


class BoundedServer(web.Server):
    """aiohttp's low-level server making ClientConnections."""

    def __init__(self, handler: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits

    def __call__(self) -> RequestHandler:
        return ClientConnection(self, self._limits, loop=self._loop, **self._kwargs)

