"""One signature everywhere: a handler is ``async (request) -> response``; a layer is
``async (request, call_next) -> response``. ``compose`` folds layers around a terminal once,
when a config is built; the hot path then only calls the result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol, TypeVar

from gateway.http import Request, Response

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Req_contra = TypeVar("Req_contra", contravariant=True)

Handler = Callable[[Request], Awaitable[Response]]


class Layer(Protocol[Req, Resp]):
    """Anything that takes the request and the rest of the chain (``call_next``)."""

    def __call__(
        self, request: Req, call_next: Callable[[Req], Awaitable[Resp]]
    ) -> Awaitable[Resp]: ...


def compose(
    terminal: Callable[[Req], Awaitable[Resp]], layers: Sequence[Layer[Req, Resp]]
) -> Callable[[Req], Awaitable[Resp]]:
    """Return ``layers[0](req, layers[1](req, ... terminal))`` as one handler."""
    handler = terminal
    for layer in reversed(layers):
        handler = partial(layer, call_next=handler)
    return handler
