"""The upstream side: everything between a terminal and a service.

    request.py    UpstreamRequest, the handler/layer types every layer shares
    stack.py      Upstream: the stack per route (retry -> breaker -> balancer -> measure -> sender)
    state.py      UpstreamState: what one upstream remembers between calls and across reloads
    retry.py  breaker.py  balancer.py  health.py     the policies
    sender.py     the innermost hop and the one place client errors are mapped
    http1.py      the pooled HTTP/1.1 client (connection.py: one keep-alive connection)
    websocket.py  the WebSocket sender and relay: the innermost hop of a ``websocket = true``
                  route's upgrade stack (placed by the stack builder, not chosen per request)

Nothing is imported here, so ``import gateway.upstream.request`` stays light (orchestration
used as a library needs no breaker, Redis or health checks).
"""
