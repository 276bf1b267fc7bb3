"""``compose()`` and the timed chain: order, self-time per plugin, crashes become 500."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway import Plugin, PluginConfig
from gateway.chain import PluginFailed, build_chain
from gateway.compose import Handler, Layer, compose
from gateway.errors import Forbidden, GatewayError
from gateway.http import Request, Response
from gateway.metrics import Metrics
from gateway.testing import build_plugin, make_request

Next = Callable[[str], Awaitable[str]]


async def test_compose_runs_layers_in_order_around_the_terminal() -> None:
    seen: list[str] = []

    def layer(name: str) -> Layer[str, str]:
        async def run(request: str, call_next: Next) -> str:
            seen.append(f"{name}>")
            response = await call_next(f"{request}{name}")
            seen.append(f"<{name}")
            return f"{response}{name}"

        return run

    async def terminal(request: str) -> str:
        seen.append(f"terminal({request})")
        return "T"

    handler = compose(terminal, [layer("a"), layer("b"), layer("c")])
    assert await handler("req:") == "Tcba"
    assert seen == ["a>", "b>", "c>", "terminal(req:abc)", "<c", "<b", "<a"]


async def test_compose_without_layers_is_the_terminal() -> None:
    async def terminal(request: str) -> str:
        return request.upper()

    assert await compose(terminal, [])("x") == "X"


async def test_a_layer_can_answer_early() -> None:
    called: list[str] = []

    async def stop(request: str, call_next: Next) -> str:
        return "early"

    async def terminal(request: str) -> str:
        called.append(request)
        return "late"

    assert await compose(terminal, [stop])("x") == "early"
    assert called == []


# --- the timed chain --------------------------------------------------------------------------


class SleepConfig(PluginConfig):
    before: float = 0.0
    after: float = 0.0
    fail: bool = False


class Sleepy(Plugin[SleepConfig]):
    """Spends ``before`` seconds, calls the rest, spends ``after`` seconds."""

    name = "sleepy"
    Config = SleepConfig

    async def handle(self, request: Request, call_next: Handler) -> Response:
        request.state.setdefault("order", []).append(self.config.before)
        await asyncio.sleep(self.config.before)
        if self.config.fail:
            raise KeyError("a bug in the plugin")
        response = await call_next(request)
        await asyncio.sleep(self.config.after)
        return response


class Other(Sleepy):
    name = "other"


def sleeping_terminal(seconds: float, calls: list[Request]) -> Handler:
    async def terminal(request: Request) -> Response:
        calls.append(request)
        await asyncio.sleep(seconds)
        return Response(200, body=b"done", source="upstream")

    return terminal


def seconds(metrics: Metrics, plugin: str, kind: str = "sum", route: str = "r") -> float:
    value = metrics.registry.get_sample_value(
        f"gateway_plugin_duration_seconds_{kind}", {"route": route, "plugin": plugin}
    )
    assert value is not None, f"no sample for plugin {plugin}"
    return value


async def test_plugin_time_excludes_the_rest_of_the_chain() -> None:
    metrics = Metrics()
    outer = build_plugin(Sleepy, before=0.03, after=0.02)
    inner = build_plugin(Other, before=0.01)
    calls: list[Request] = []
    handler = build_chain("r", [outer, inner], sleeping_terminal(0.15, calls), metrics.plugin_duration)

    response = await handler(make_request(route="r"))

    assert response.status == 200 and response.body == b"done"
    assert len(calls) == 1
    assert calls[0].state["order"] == [0.03, 0.01]  # outer plugin first
    assert seconds(metrics, "sleepy", "count") == 1
    assert seconds(metrics, "other", "count") == 1
    # outer: 30 ms + 20 ms of its own; neither the inner plugin's 10 ms nor the terminal's 150 ms
    assert 0.05 <= seconds(metrics, "sleepy") < 0.09
    assert 0.01 <= seconds(metrics, "other") < 0.05


async def test_plugin_answering_early_is_timed_whole() -> None:
    metrics = Metrics()

    class Early(Plugin[PluginConfig]):
        name = "early"

        async def handle(self, request: Request, call_next: Handler) -> Response:
            await asyncio.sleep(0.02)
            return Response(204)

    calls: list[Request] = []
    handler = build_chain("r", [build_plugin(Early)], sleeping_terminal(0.0, calls), metrics.plugin_duration)
    assert (await handler(make_request())).status == 204
    assert calls == []
    assert 0.02 <= seconds(metrics, "early") < 0.06


async def test_chain_without_plugins_is_the_terminal() -> None:
    metrics = Metrics()
    calls: list[Request] = []
    terminal = sleeping_terminal(0.0, calls)
    assert build_chain("r", [], terminal, metrics.plugin_duration) is terminal


async def test_plugin_crash_becomes_plugin_failed_500_and_is_still_timed() -> None:
    metrics = Metrics()
    calls: list[Request] = []
    plugins = [build_plugin(Other), build_plugin(Sleepy, fail=True)]
    handler = build_chain("r", plugins, sleeping_terminal(0.0, calls), metrics.plugin_duration)
    with pytest.raises(PluginFailed) as caught:
        await handler(make_request())
    assert isinstance(caught.value, GatewayError)
    assert caught.value.status == 500
    assert "sleepy" in caught.value.detail
    assert "a bug in the plugin" not in caught.value.detail  # internals stay in the log
    assert calls == []
    assert seconds(metrics, "sleepy", "count") == 1
    assert seconds(metrics, "other", "count") == 1


async def test_gateway_errors_from_a_plugin_pass_through_unchanged() -> None:
    class Deny(Plugin[PluginConfig]):
        name = "deny"

        async def handle(self, request: Request, call_next: Handler) -> Response:
            raise Forbidden("no")

    metrics = Metrics()
    handler = build_chain("r", [build_plugin(Deny)], sleeping_terminal(0.0, []), metrics.plugin_duration)
    with pytest.raises(Forbidden):
        await handler(make_request())
    assert seconds(metrics, "deny", "count") == 1
