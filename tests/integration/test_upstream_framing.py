"""Upstream response framing: a pooled connection is reused only after an answer framed
exactly, and one client's answer never reaches another client.

The upstreams here are raw sockets that write exact bytes: an answer followed by more bytes
(a second answer, garbage, CR/LF), a body where none may be, bytes arriving on a parked
connection. The lean client (gateway.upstream.http1) is checked directly, then the whole gateway,
then a fuzz run of concurrent clients against an upstream drawing a framing fault per request.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest

from gateway.errors import UpstreamError, UpstreamReset
from gateway.upstream.http1 import Http1Client
from tests.conftest import StartGateway
from tests.support import IO_TIMEOUT, proxy_config, read_request_head, url
from tests.support.edge import exchange, lean_client, send
from tests.support.raw import RawHandler, raw_server, read_request

CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=IO_TIMEOUT)
POISON_BODY = b'{"poisoned": true}'
POISON = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(POISON_BODY), POISON_BODY)


# --- a raw upstream -------------------------------------------------------------------------


def clean(body: bytes, status: int = 200) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


async def call(client: Http1Client, target: str, tag: str, method: str = "GET",
               body: bytes | None = None) -> tuple[int, bytes]:
    status, _, received = await exchange(client, target, method, "/", {"X-Tag": tag}, body)
    return status, received


def first_then_clean(first: bytes | None = None, *, then: RawHandler | None = None, close: bool = False) -> RawHandler:
    """Answers the request tagged ``first`` with those bytes (by default like any other), any other
    with its own tag; after the first answer ``then`` runs, and with ``close`` the connection ends."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            tag = (await read_request(reader)).headers["X-Tag"]
            own = clean(b"tag=" + tag.encode())
            writer.write(first if tag == "first" and first is not None else own)
            await writer.drain()
            if tag == "first" and then is not None:
                await then(reader, writer)
            if tag == "first" and close:
                return

    return serve


# --- the lean client: which answers leave a connection reusable ------------------------------

CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
TRAILERS = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n"
HELLO = clean(b"hello")

EXACT = {  # id: (method, bytes, status, body) -- framed exactly: the connection is reused
    "length": ("GET", HELLO, 200, b"hello"),
    "length-body-ends-with-crlf": ("GET", clean(b"hello\r\n"), 200, b"hello\r\n"),
    "length-body-ends-with-blank-line": ("GET", clean(b"ab\r\n\r\n"), 200, b"ab\r\n\r\n"),
    "chunked": ("GET", CHUNKED, 200, b"abc"),
    "chunked-trailers": ("GET", TRAILERS, 200, b"abc"),
    "no-content": ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
    "not-modified": ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 304, b""),
    "head": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", 200, b""),
    "head-empty": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 200, b""),
    "head-chunked": ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 200, b""),
    "continue": ("POST", b"HTTP/1.1 100 Continue\r\n\r\n" + HELLO, 200, b"hello"),
    "early-hints": ("GET", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + HELLO, 200, b"hello"),
}

INEXACT = {  # id: (method, bytes, status, body, close) -- the client gets its answer; the connection is closed
    "length+response": ("GET", HELLO + POISON, 200, b"hello", False),
    "length+garbage": ("GET", HELLO + b"garbage", 200, b"hello", False),
    "length+crlf": ("GET", HELLO + b"\r\n", 200, b"hello", False),
    "length-body-ends-with-crlf+crlf": ("GET", clean(b"hello\r\n") + b"\r\n", 200, b"hello\r\n", False),
    "length-too-short": ("GET", HELLO.replace(b"Length: 5", b"Length: 3"), 200, b"hel", False),
    "chunked+response": ("GET", CHUNKED + POISON, 200, b"abc", False),
    "chunked+crlf": ("GET", CHUNKED + b"\r\n", 200, b"abc", False),
    "chunked+chunk": ("GET", CHUNKED + b"5\r\nhello\r\n", 200, b"abc", False),
    "trailers+response": ("GET", TRAILERS + POISON, 200, b"abc", False),
    "no-content+body": ("GET", b"HTTP/1.1 204 No Content\r\n\r\nhello", 204, b"", False),
    "no-content+response": ("GET", b"HTTP/1.1 204 No Content\r\n\r\n" + POISON, 204, b"", False),
    "no-content+crlf": ("GET", b"HTTP/1.1 204 No Content\r\n\r\n\r\n", 204, b"", False),
    "not-modified+body": ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\nhello", 304, b"", False),
    "head+body": ("HEAD", HELLO, 200, b"", False),
    "head+response": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + POISON, 200, b"", False),
    "head+crlf": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n\r\n", 200, b"", False),
    "head-chunked+last-chunk": ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                                200, b"", False),
    "head-chunked+fragment": ("HEAD", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5", 200, b"", False),
    "interim-with-body": ("GET", b"HTTP/1.1 199 Odd\r\nContent-Length: 3\r\n\r\nabc" + HELLO, 200, b"hello", False),
    "continue+response": ("POST", b"HTTP/1.1 100 Continue\r\n\r\n" + HELLO + POISON, 200, b"hello", False),
    "close-delimited": ("GET", b"HTTP/1.1 200 OK\r\n\r\nhello", 200, b"hello", True),
    "connection-close": ("GET", HELLO.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"), 200, b"hello", True),
    "http-1.0": ("GET", HELLO.replace(b"HTTP/1.1", b"HTTP/1.0"), 200, b"hello", True),
}

FAILING = {  # id: (bytes, error) -- no answer for this client (a 502), and the connection is closed
    "length-too-long-then-close": (HELLO.replace(b"Length: 5", b"Length: 10"), UpstreamReset),
    "chunked-cut-mid-chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc", UpstreamReset),
    "switching-protocols": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n" + POISON,
                            UpstreamReset),
    "not-http": (b"HTTTP/1.1 200 OK\r\n\r\n", UpstreamError),
    "closed-without-answer": (b"", UpstreamReset),
}


def _body_for(method: str) -> bytes | None:
    return b"data" if method == "POST" else None


@pytest.mark.parametrize("case", EXACT)
async def test_an_exactly_framed_answer_leaves_the_connection_reusable(case: str) -> None:
    method, answer, status, body = EXACT[case]
    async with lean_client(first_then_clean(answer)) as (client, up):
        assert await call(client, up.url, "first", method, _body_for(method)) == (status, body)
        await asyncio.sleep(0.02)  # anything late would arrive now
        assert await call(client, up.url, "second") == (200, b"tag=second")
        assert len(up.connections) == 1


@pytest.mark.parametrize("case", INEXACT)
async def test_bytes_beyond_the_answer_close_the_connection(case: str) -> None:
    method, answer, status, body, close = INEXACT[case]
    async with lean_client(first_then_clean(answer, close=close)) as (client, up):
        assert await call(client, up.url, "first", method, _body_for(method)) == (status, body)
        assert not client._pools[up.url].idle  # never parked
        assert await call(client, up.url, "second") == (200, b"tag=second")
        assert len(up.connections) == 2


@pytest.mark.parametrize("case", FAILING)
async def test_a_broken_answer_fails_this_request_only(case: str) -> None:
    answer, error = FAILING[case]
    async with lean_client(first_then_clean(answer, close=True)) as (client, up):
        with pytest.raises(error):
            await call(client, up.url, "first")
        assert await call(client, up.url, "second") == (200, b"tag=second")
        assert len(up.connections) == 2


@pytest.mark.parametrize("late", [POISON, b"\r\n", b"x", b""], ids=["response", "crlf", "byte", "eof"])
async def test_a_parked_connection_that_receives_anything_is_dropped_at_once(late: bytes) -> None:
    parked = asyncio.Event()

    async def send_late(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await parked.wait()
        writer.write(late)  # nothing at all for "eof": the end of the stream while parked
        await writer.drain()

    async with lean_client(first_then_clean(then=send_late, close=not late)) as (client, up):
        assert await call(client, up.url, "first") == (200, b"tag=first")
        pool = client._pools[up.url]
        assert len(pool.idle) == 1
        conn = pool.idle[0]
        parked.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not pool.idle:
                break
        assert not pool.idle and conn.closed
        assert await call(client, up.url, "second") == (200, b"tag=second")
        assert len(up.connections) == 2


async def poison_soon(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(0.02)
    writer.write(POISON)
    await writer.drain()


async def never_again(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
    await reader.read()  # the rest of the request is left unread, and nothing more is answered


async def slow_body() -> AsyncIterator[bytes]:
    yield b"part one"
    await asyncio.sleep(0.1)
    yield b"part two"


@pytest.mark.parametrize(("then", "method", "path", "body", "delay"), [
    # the client is slow to read: the stray answer arrives meanwhile
    pytest.param(poison_soon, "GET", "/", None, 0.1, id="bytes-after-the-answer"),
    # the chunked body is all sent after the answer came, before release
    pytest.param(never_again, "POST", "/upload", slow_body, 0.2, id="answer-before-the-streamed-body"),
])
async def test_what_happens_between_the_answer_and_its_release_closes_the_connection(
    then: RawHandler, method: str, path: str, body: Callable[[], AsyncIterator[bytes]] | None, delay: float
) -> None:
    async with lean_client(first_then_clean(then=then)) as (client, up):
        response = await send(client, up.url, method, path, {"X-Tag": "first"}, body() if body else None)
        await asyncio.sleep(delay)
        assert (response.status, await response.read()) == (200, b"tag=first")
        response.release()
        assert not client._pools[up.url].idle
        assert await call(client, up.url, "second") == (200, b"tag=second")
        assert len(up.connections) == 2


async def test_an_answer_before_a_large_request_body_was_sent_closes_the_connection() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)  # the body is never read
        writer.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()  # only once the answer went out

    async with lean_client(serve) as (client, up):
        status, body = await call(client, up.url, "first", "POST", b"x" * (32 * 1024 * 1024))
        assert (status, body) == (413, b"")
        assert not client._pools[up.url].idle


async def test_an_answer_split_inside_its_last_line_is_read_whole() -> None:
    async def rest_of_it(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.01)
        writer.write(CHUNKED[-3:])
        await writer.drain()

    async with lean_client(first_then_clean(CHUNKED[:-3], then=rest_of_it)) as (client, up):
        assert await call(client, up.url, "first") == (200, b"abc")
        assert await call(client, up.url, "second") == (200, b"tag=second")


async def test_a_large_answer_followed_by_another_is_not_reused() -> None:
    big = b"x" * (600 * 1024)  # past the read pause threshold

    async with lean_client(first_then_clean(clean(big) + POISON)) as (client, up):
        response = await send(client, up.url, "GET", "/", {"X-Tag": "first"})
        received = b""
        async for chunk in response:
            received += chunk
            await asyncio.sleep(0)
        response.release()
        assert received == big
        assert await call(client, up.url, "second") == (200, b"tag=second")
        assert len(up.connections) == 2


# --- through the gateway ------------------------------------------------------------------


def gateway_config(target: str) -> str:
    return proxy_config(target, rewrite="/{rest}", gateway='timeout = "3s"',
                        upstream='timeout = { connect = "1s", response = "2s", idle = "1s" }')


def own_body(tag: str) -> bytes:
    return json.dumps({"tag": tag}).encode()


async def test_a_poisoned_connection_never_answers_another_client(gateway: StartGateway) -> None:
    late_sent = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            tag = request.headers["X-Tag"]
            answer = clean(own_body(tag))
            if tag == "a":  # a second answer in the same write
                answer += clean(own_body("b"))
            elif tag == "no-content":
                answer = b"HTTP/1.1 204 No Content\r\n\r\n" + POISON
            elif tag == "not-modified":
                answer = b"HTTP/1.1 304 Not Modified\r\n\r\n" + POISON
            elif tag == "head":
                answer = clean(POISON_BODY)
            writer.write(answer)
            await writer.drain()
            if tag == "c":  # a late, unsolicited answer while the connection is parked
                await asyncio.sleep(0.05)
                writer.write(POISON)
                await writer.drain()
                late_sent.set()

    async with raw_server(serve) as up, aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        gw = await gateway(gateway_config(up.url))

        async def get(tag: str, method: str = "GET") -> tuple[int, bytes]:
            async with http.request(method, url(gw, "/svc/x"), headers={"X-Tag": tag}) as response:
                return response.status, await response.read()

        assert await get("a") == (200, own_body("a"))
        assert await get("b") == (200, own_body("b"))
        assert len(up.connections) == 2
        assert await get("c") == (200, own_body("c"))
        await asyncio.wait_for(late_sent.wait(), IO_TIMEOUT)
        await asyncio.sleep(0.05)
        assert await get("d") == (200, own_body("d"))
        assert len(up.connections) == 3
        assert await get("no-content") == (204, b"")
        assert await get("e") == (200, own_body("e"))
        assert await get("not-modified") == (304, b"")
        assert await get("f") == (200, own_body("f"))
        assert await get("head", "HEAD") == (200, b"")
        assert await get("g") == (200, own_body("g"))
        assert len(up.connections) == 6


# --- fuzz: concurrent clients, a framing fault per request ---------------------------------

FUZZ_ROUNDS = 200 if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else 12
FUZZ_CLIENTS = 16


CUT = -1  # the client's connection was closed mid-body (the upstream broke off after its headers)


@dataclass
class Outcome:
    """What a client must get: its own answer (status, body), or a gateway error (502/504, or
    its connection cut mid-body when the headers were already on their way)."""

    status: int
    body: bytes
    error: bool = False


def forged(rng: random.Random, victim: str) -> bytes:
    """An answer that would pass for another request's if it ever reached that client."""
    body = json.dumps({"id": victim, "nonce": "forged"}).encode()
    status = rng.choice([200, 201, 404, 500])
    return b"HTTP/1.1 %d X\r\nX-Forged: 1\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


def draw_answer(rng: random.Random, request_id: str, nonce: str,
                victim: str) -> tuple[str, list[bytes], bool, bytes, Outcome]:
    """A fault for one request: (name, writes, close after, bytes for later, expected outcome)."""
    body = json.dumps({"id": request_id, "nonce": nonce}).encode()
    own = Outcome(200, body)
    plain = clean(body)
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    stray = rng.choice([forged(rng, victim), b"garbage", b"\r\n", b"HTTP/1.1 200 OK\r\n", b"0\r\n\r\n"])
    cut = rng.randrange(1, len(body))
    faults: list[tuple[str, list[bytes], bool, bytes, Outcome]] = [
        ("clean", [plain], False, b"", own),
        ("split", [plain[:cut + 20], plain[cut + 20:]], False, b"", own),
        ("extra-bytes", [plain + stray], False, b"", own),
        ("second-answer", [plain + forged(rng, victim)], False, b"", own),
        ("late-stray", [plain], False, stray, own),
        ("late-answer", [plain], False, forged(rng, victim), own),
        ("short-length-then-close", [plain.replace(b"Length: %d" % len(body), b"Length: %d" % cut)], True, b"",
         Outcome(200, body[:cut])),
        ("long-length-then-close", [plain.replace(b"Length: %d" % len(body), b"Length: %d" % (len(body) + 7))],
         True, b"", Outcome(502, b"", error=True)),
        ("cut-mid-body", [plain[:-cut]], True, b"", Outcome(502, b"", error=True)),
        ("chunked", [chunked], False, b"", own),
        ("chunked+garbage", [chunked + stray], False, b"", own),
        ("chunked+answer", [chunked + forged(rng, victim)], False, b"", own),
        ("no-content+body", [b"HTTP/1.1 204 No Content\r\n\r\n" + rng.choice([body, forged(rng, victim)])], False, b"",
         Outcome(204, b"")),
        ("not-modified+body", [b"HTTP/1.1 304 Not Modified\r\n\r\n" + rng.choice([body, forged(rng, victim)])], False,
         b"", Outcome(304, b"")),
        ("continue", [b"HTTP/1.1 100 Continue\r\n\r\n" + plain], False, b"", own),
        ("interim-with-body", [b"HTTP/1.1 199 Odd\r\nContent-Length: %d\r\n\r\n%s" % (len(POISON), POISON) + plain],
         False, b"", own),
        ("close-delimited", [b"HTTP/1.1 200 OK\r\n\r\n" + body], True, b"", own),
        ("closed-without-answer", [], True, b"", Outcome(502, b"", error=True)),
    ]
    return rng.choice(faults)


async def test_fuzz_concurrent_clients_only_ever_get_their_own_answer(gateway: StartGateway) -> None:
    seed = int(os.environ.get("FRAMING_SEED", random.randrange(2**32)))
    expected: dict[str, Outcome] = {}
    drawn: dict[str, str] = {}
    pending_late: list[tuple[asyncio.StreamWriter, bytes]] = []
    counter = iter(range(10**9))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            request_id, nonce = request.headers["X-Id"], request.headers["X-Nonce"]
            rng = random.Random(f"{seed}:{request_id}")
            victim = f"r{int(request_id[1:]) + 1}"  # the next client's id: the likeliest to be misled
            name, writes, close, late, outcome = draw_answer(rng, request_id, nonce, victim)
            drawn[request_id], expected[request_id] = name, outcome
            for part in writes:
                writer.write(part)
                await writer.drain()
                if len(writes) > 1:
                    await asyncio.sleep(0.005)
            if close:
                return
            if late:  # written once no request is in flight: late bytes never race a new request
                pending_late.append((writer, late))

    async def client(http: aiohttp.ClientSession, gw_url: str) -> tuple[str, int, bytes, str]:
        request_id = f"r{next(counter)}"
        nonce = os.urandom(6).hex()
        headers = {"X-Id": request_id, "X-Nonce": nonce}
        async with http.get(gw_url, headers=headers) as response:
            assert "X-Forged" not in response.headers, f"seed={seed} request={request_id}"
            try:
                body = await response.read()
            except aiohttp.ClientPayloadError:  # headers already streamed: the gateway cut the connection
                return request_id, CUT, b"", ""
            return request_id, response.status, body, response.headers.get("Content-Type", "")

    async with (raw_server(serve) as up, aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http,
                asyncio.timeout(max(10.0, FUZZ_ROUNDS * 0.5))):
        gw = await gateway(gateway_config(up.url))
        gw_url = url(gw, "/svc/fuzz")
        for _ in range(FUZZ_ROUNDS):
            results = await asyncio.gather(*(client(http, gw_url) for _ in range(FUZZ_CLIENTS)))
            for request_id, status, body, content_type in results:
                want = expected.get(request_id)
                context = f"seed={seed} request={request_id} fault={drawn.get(request_id)}"
                assert b"forged" not in body and b"poisoned" not in body, f"{context}: {body!r}"
                if want is not None and not want.error:
                    assert (status, body) == (want.status, want.body), context
                elif status != CUT:  # a cut connection is the honest answer once headers were sent
                    assert status in (502, 504), f"{context}: {status} {body!r}"
                    assert content_type == "application/problem+json", context
            for writer, late in pending_late:
                if not writer.is_closing():
                    writer.write(late)
            pending_late.clear()
            await asyncio.sleep(0.02)  # the late bytes reach the parked connections
