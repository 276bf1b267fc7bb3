"""The process's outbound clients (docs/architecture.md): the lean HTTP/1.1 pools every
upstream stack sends through, the aiohttp session for WebSockets, health probes and plugins,
the Redis pool(s), and what each upstream remembers across reloads. One per gateway process,
started before the first Runtime and closed after the last."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp

from gateway.redis_pool import RedisHolder
from gateway.upstream.http1 import Http1Client
from gateway.upstream.sender import new_session
from gateway.upstream.state import UpstreamStates


class Clients:
    """Everything that talks out of one gateway process, opened by ``start`` and closed by ``close``."""

    def __init__(self) -> None:
        self.http1 = Http1Client()
        self.redis = RedisHolder()
        self.upstreams = UpstreamStates(self)
        self._session: aiohttp.ClientSession | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session; it exists only between ``start`` and ``close``."""
        if self._session is None:
            raise RuntimeError("the HTTP client exists only between startup and shutdown")
        return self._session

    async def start(self) -> None:
        if self._session is None:
            self._session = new_session()
            self._sweeper = asyncio.get_running_loop().create_task(self.http1.sweep_forever())

    async def close(self) -> None:
        await self.redis.close()
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await self.http1.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
