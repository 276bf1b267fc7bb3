"""``ip_filter``: allow or deny clients by address (the client IP worked out behind
trusted proxies, never a header from an untrusted peer)."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from pydantic import Field

from gateway import Cidr, Forbidden, Handler, Plugin, PluginConfig, PluginContext, Request, Response


class IpFilterConfig(PluginConfig):
    allow: list[Cidr] = Field(default_factory=list)
    deny: list[Cidr] = Field(default_factory=list)


class IpFilter(Plugin[IpFilterConfig]):
    """403 for denied addresses, and for all but the allowed ones when ``allow`` is set."""

    name = "ip_filter"
    Config = IpFilterConfig

    def __init__(self, config: IpFilterConfig, context: PluginContext) -> None:
        super().__init__(config, context)
        if not config.allow and not config.deny:
            raise ValueError("needs `allow` or `deny` (a list of CIDRs)")
        allow = tuple(ipaddress.ip_network(c, strict=False) for c in config.allow)
        deny = tuple(ipaddress.ip_network(c, strict=False) for c in config.deny)

        @lru_cache(maxsize=8192)
        def permitted(address: str) -> bool:
            try:
                ip = ipaddress.ip_address(address.split("%", 1)[0])
            except ValueError:
                return not allow
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if any(ip in net for net in deny):
                return False
            return not allow or any(ip in net for net in allow)

        self._permitted = permitted

    async def handle(self, request: Request, call_next: Handler) -> Response:
        if not self._permitted(request.client_ip):
            raise Forbidden("your address is not allowed here")
        return await call_next(request)
