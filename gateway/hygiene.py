"""Request hygiene at the edge, before routing (docs/security.md): the client's headers
made into the ones the chain sees, the Host checked, TRACE/CONNECT kept out.

Pure functions of headers and settings; a refusal is a ``BadRequest`` (400).
"""

from __future__ import annotations

import re
from typing import Literal

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.errors import BadRequest
from gateway.forwarding import HOP_BY_HOP, connection_tokens

UnderscoreRule = Literal["drop", "reject", "allow"]

# Methods a route answers only when its `methods` names them.
EXPLICIT_ONLY = frozenset({"TRACE", "CONNECT"})
# Framing the gateway keeps end to end, whatever Connection says.
_NEVER_NAMED = frozenset({"host", "content-length"})
# Who-is-the-client headers only a trusted proxy may send.
_UNTRUSTED_DROP = ("forwarded", "x-real-ip")
_PLAIN_CONNECTION = frozenset({"keep-alive", "close", "upgrade"})
_AUTHORITY = re.compile(
    r"(?P<name>\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9._~-]+)?\]|[A-Za-z0-9._~-]+)(?::(?P<port>[0-9]{0,5}))?"
)


def split_host(value: str) -> tuple[str, int | None] | None:
    """An authority ``host[:port]`` (a host name or IP literal, an optional port) as (lower-case
    name, port); an IPv6 literal keeps its brackets, a name its trailing dot dropped. None when
    it is not one."""
    match = _AUTHORITY.fullmatch(value)
    if match is None or value.startswith(".") or ".." in value:
        return None
    port = match.group("port")
    if port and int(port) > 65535:
        return None
    name = match.group("name").lower()
    if name.endswith(".") and not name.startswith("["):
        name = name[:-1]
    return (name, int(port) if port else None) if name else None


def check_host(host: str | None) -> None:
    """A Host must be an authority: a host name or IP literal, an optional port (the same
    rules as split_host, without building its result: this runs on every request)."""
    if host is None:
        return  # HTTP/1.0 without Host (HTTP/1.1 without one is refused by the parser)
    match = _AUTHORITY.fullmatch(host)
    port = match.group("port") if match is not None else None
    if match is None or (port and int(port) > 65535) or host[0] == "." or ".." in host:
        raise BadRequest("the Host header is not a valid host[:port]")


def clean_headers(
    raw: CIMultiDictProxy[str] | CIMultiDict[str], *, underscores: UnderscoreRule, peer_trusted: bool
) -> CIMultiDict[str]:
    """The client's headers as the chain sees them.

    Removed: names with ``_`` (unless allowed; ``reject`` answers 400), every ``X-Consumer*``
    (the gateway's word on who the caller is), the headers the client's ``Connection`` names
    (so a header a plugin sets later always reaches the upstream), and — from a peer that is
    not a trusted proxy — ``Forwarded``, ``X-Real-IP`` and ``X-Forwarded-*`` other than
    ``X-Forwarded-For`` (which the proxy appends to).
    """
    if _nothing_to_remove(raw):
        return CIMultiDict(raw)  # the common case: one copy in C
    named = frozenset(t for t in connection_tokens(raw.getall("Connection", ()))
                      if t not in HOP_BY_HOP and t not in _NEVER_NAMED)
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in raw.items():
        lower = key.lower()
        if "_" in key and underscores != "allow":
            if underscores == "reject":
                raise BadRequest("header names with '_' are not accepted")
            continue
        if lower.startswith("x-consumer") or lower in named:
            continue
        if not peer_trusted and (lower in _UNTRUSTED_DROP or (lower.startswith("x-forwarded-")
                                                             and lower != "x-forwarded-for")):
            continue
        if lower == "connection":
            value = ", ".join(t for t in connection_tokens((value,)) if t in HOP_BY_HOP)
            if not value:
                continue
        out.add(key, value)
    return out


def _nothing_to_remove(raw: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    """A quick look at all names at once (newline-joined, so each is found whole)."""
    names = "\n" + "\n".join(raw.keys()).lower() + "\n"
    if "_" in names or "\nx-consumer" in names or "\nx-real-ip\n" in names or "\nforwarded\n" in names:
        return False
    if names.count("\nx-forwarded-") != names.count("\nx-forwarded-for\n"):
        return False
    connections = raw.getall("Connection", ())
    if not connections:
        return True
    return len(connections) == 1 and connections[0].lower() in _PLAIN_CONNECTION

