"""How steps reach upstreams: through the gateway's upstream stacks (retry, breaker,
balancer, pooled client) or, for a service orchestrating its own calls, over a plain
aiohttp session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Mapping

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.orchestration.engine import StepCall, StepReply
from gateway.upstream.request import UpstreamHandler, UpstreamRequest
from gateway.upstream.sender import map_client_error

DEFAULT_LIMIT = 10 * 1024 * 1024


async def read_limited(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """Read a whole answer, refusing one larger than ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise UpstreamError(f"the upstream's answer is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


class UpstreamCaller:
    """Steps of one route, each call through its upstream's stack."""

    def __init__(self, stacks: Mapping[str, UpstreamHandler], route: str, limit: int = DEFAULT_LIMIT) -> None:
        self.stacks = stacks
        self.route = route
        self.limit = limit

    async def __call__(self, call: StepCall) -> StepReply:
        request = UpstreamRequest(
            call.method, call.path_qs, CIMultiDict(call.headers), call.body,
            route=self.route, upstream=call.upstream, deadline=call.deadline,
        )
        response = await self.stacks[call.upstream](request)
        stream = response.stream
        try:  # the body's pace is bounded by the upstream's idle timeout and the route budget
            if stream is None:
                body = response.body
            elif (length := getattr(stream, "length", None)) is not None and length <= self.limit:
                body = await stream.read()  # type: ignore[attr-defined]
            else:
                body = await read_limited(stream, self.limit)
        finally:
            response.release()
        return StepReply(response.status, body, response.headers.get("Content-Type"))


class SessionCaller:
    """Steps over a plain aiohttp session: ``upstreams`` maps a step's ``upstream`` name to a
    base URL such as ``http://users.internal:8080``."""

    def __init__(self, session: aiohttp.ClientSession, upstreams: Mapping[str, str],
                 limit: int = DEFAULT_LIMIT) -> None:
        self.session = session
        self.upstreams = {name: url.rstrip("/") for name, url in upstreams.items()}
        self.limit = limit

    async def __call__(self, call: StepCall) -> StepReply:
        base = self.upstreams.get(call.upstream)
        if base is None:
            raise UpstreamError(f"no base URL for upstream {call.upstream!r}")
        try:
            async with asyncio.timeout_at(call.deadline), self.session.request(
                call.method, URL(base + call.path_qs, encoded=True), headers=call.headers, data=call.body,
                allow_redirects=False,
            ) as response:
                body = await read_limited(response.content.iter_chunked(64 * 1024), self.limit)
                return StepReply(response.status, body, response.headers.get("Content-Type"))
        except TimeoutError:
            raise UpstreamTimeout("the upstream did not answer in time") from None
        except GatewayError:
            raise
        except (aiohttp.ClientError, OSError) as exc:
            raise map_client_error(exc, None) from None
