"""What a proxy does to headers: drop hop-by-hop ones both ways, work out the client's
address behind trusted proxies, and add the X-Forwarded-* headers (docs/configuration.md)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "te", "trailer", "trailers", "transfer-encoding", "upgrade")
)
# Also never forwarded upstream: the client's Host (unless preserve_host) and Expect, which
# the gateway answers itself.
_REQUEST_ONLY = frozenset(("host", "expect"))


def connection_tokens(values: Iterable[str]) -> list[str]:
    """The header names (lower-cased) that ``Connection`` header values list."""
    return [token.strip().lower() for value in values for token in value.split(",") if token.strip()]


def strip_hop_by_hop(
    headers: CIMultiDict[str] | CIMultiDictProxy[str], *, request: bool
) -> CIMultiDict[str]:
    """A copy of ``headers`` without hop-by-hop headers and those named in Connection."""
    named = set(connection_tokens(headers.getall("Connection", ())))
    drop = _REQUEST_ONLY if request else frozenset()
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        lower = key.lower()
        if lower in HOP_BY_HOP or lower in drop or lower in named or lower.startswith("proxy-"):
            continue
        out.add(key, value)
    return out


class TrustedProxies:
    """The networks allowed to say who the client is (X-Forwarded-For/Proto/Host)."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._networks = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self.trusts = lru_cache(maxsize=4096)(self._trusts)

    def _trusts(self, address: str) -> bool:
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self._networks)

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: the peer, unless a trusted peer forwarded for someone.

        Walks X-Forwarded-For from the right, skipping trusted proxies; the first
        untrusted address is the client. A header from an untrusted peer is ignored.
        """
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop if _is_ip(hop) else peer
        return hops[0] if hops and _is_ip(hops[0]) else peer


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
