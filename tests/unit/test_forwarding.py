"""Hop-by-hop headers and the client address behind trusted proxies (docs/configuration.md)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.forwarding import TrustedProxies, strip_hop_by_hop

HOP_BY_HOP = [
    "Connection", "Keep-Alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
    "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Anything",
]


def headers(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


@pytest.mark.parametrize("request_side", [True, False], ids=["request", "response"])
@pytest.mark.parametrize("name", HOP_BY_HOP)
def test_hop_by_hop_headers_are_dropped_both_ways(name: str, request_side: bool) -> None:
    out = strip_hop_by_hop(headers((name, "x"), ("X-Keep", "1")), request=request_side)
    assert name not in out
    assert out["X-Keep"] == "1"


@pytest.mark.parametrize("request_side", [True, False], ids=["request", "response"])
def test_hop_by_hop_headers_are_dropped_whatever_their_case(request_side: bool) -> None:
    # Header names are case-insensitive (RFC 9110 §5.1); HTTP/2 front proxies send them lowercase,
    # aiohttp's pure-Python parser keeps the case as sent, and plugins may add any spelling.
    names = ["connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
             "proxy-authorization", "PROXY-CONNECTION", "KEEP-ALIVE", "Transfer-encoding"]
    incoming = headers(*[(name, "x") for name in names], ("X-Keep", "1"))
    out = strip_hop_by_hop(incoming, request=request_side)
    assert list(out.items()) == [("X-Keep", "1")]


@pytest.mark.parametrize("request_side", [True, False], ids=["request", "response"])
def test_headers_named_by_connection_are_dropped(request_side: bool) -> None:
    incoming = headers(
        ("Connection", "close, X-Internal"),
        ("Connection", " x-secret-hop ,"),
        ("X-Internal", "1"),
        ("X-Secret-Hop", "2"),
        ("X-Public", "3"),
    )
    out = strip_hop_by_hop(incoming, request=request_side)
    assert list(out.items()) == [("X-Public", "3")]


def test_request_side_also_drops_host_and_expect() -> None:
    incoming = headers(("Host", "gw.example"), ("Expect", "100-continue"), ("Accept", "*/*"))
    assert list(strip_hop_by_hop(incoming, request=True).items()) == [("Accept", "*/*")]


def test_response_side_keeps_host_like_headers_and_repeated_headers_in_order() -> None:
    incoming = headers(
        ("Set-Cookie", "a=1"), ("Keep-Alive", "timeout=5"), ("Set-Cookie", "b=2"),
        ("Content-Encoding", "gzip"), ("Host", "up"), ("Expect", "x"),
    )
    out = strip_hop_by_hop(incoming, request=False)
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]
    assert out["Content-Encoding"] == "gzip"
    assert "Host" in out and "Expect" in out


def test_strip_returns_a_copy_and_accepts_a_proxy() -> None:
    original = headers(("Connection", "close"), ("Accept", "a"))
    out = strip_hop_by_hop(CIMultiDictProxy(original), request=True)
    out["X-New"] = "1"
    assert "Connection" in original and "X-New" not in original


# --- client address --------------------------------------------------------------------------

TRUSTED = TrustedProxies(["10.0.0.0/8", "127.0.0.1/32", "::1/128", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        # an untrusted peer's X-Forwarded-For is ignored
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),
        ("203.0.113.9", "1.2.3.4, 10.0.0.2", "203.0.113.9"),
        # no header, or an empty one
        ("10.0.0.1", None, "10.0.0.1"),
        ("10.0.0.1", "", "10.0.0.1"),
        ("10.0.0.1", " , ,", "10.0.0.1"),
        # a trusted peer: walk right to left, skipping trusted hops
        ("10.0.0.1", "1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", "1.2.3.4, 10.0.0.2", "1.2.3.4"),
        ("10.0.0.1", "1.2.3.4,10.0.0.3 , 10.0.0.2", "1.2.3.4"),
        # a client can prepend lies; only the first untrusted address from the right counts
        ("10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.2", "1.2.3.4"),
        ("127.0.0.1", "6.6.6.6, 1.2.3.4", "1.2.3.4"),
        # every hop trusted: the leftmost one
        ("10.0.0.1", "10.0.0.3, 10.0.0.2", "10.0.0.3"),
        # garbage never becomes the client address
        ("10.0.0.1", "garbage", "10.0.0.1"),
        ("10.0.0.1", "1.2.3.4, garbage", "10.0.0.1"),
        ("10.0.0.1", "<script>, 10.0.0.2", "10.0.0.1"),
        ("10.0.0.1", "1.2.3.4:5678", "10.0.0.1"),
        # IPv6 peers and hops
        ("::1", "2001:db8::7", "2001:db8::7"),
        ("fd00::1", "2001:db8::7, fd00::2", "2001:db8::7"),
        ("2001:db8::1", "1.2.3.4", "2001:db8::1"),
        # an IPv4-mapped peer is the IPv4 address it maps
        ("::ffff:127.0.0.1", "1.2.3.4", "1.2.3.4"),
        ("::ffff:10.0.0.1", "1.2.3.4, ::ffff:10.0.0.2", "1.2.3.4"),
        ("::ffff:203.0.113.9", "1.2.3.4", "::ffff:203.0.113.9"),
    ],
)
def test_client_ip(peer: str, forwarded_for: str | None, client: str) -> None:
    assert TRUSTED.client_ip(peer, forwarded_for) == client


def test_no_trusted_proxies_means_the_peer_is_the_client() -> None:
    nobody = TrustedProxies([])
    assert nobody.client_ip("127.0.0.1", "1.2.3.4") == "127.0.0.1"
    assert nobody.trusts("127.0.0.1") is False


@pytest.mark.parametrize(
    ("address", "trusted"),
    [
        ("10.255.0.1", True),
        ("11.0.0.1", False),
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("::1", True),
        ("::ffff:10.1.1.1", True),
        ("fd12::1", True),
        ("fe80::1%eth0", False),
        ("not-an-ip", False),
        ("", False),
    ],
)
def test_trusts(address: str, trusted: bool) -> None:
    assert TRUSTED.trusts(address) is trusted


def test_zone_ids_are_ignored_when_matching() -> None:
    assert TrustedProxies(["fe80::/10"]).trusts("fe80::1%eth0") is True
