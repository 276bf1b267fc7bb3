"""The public plugin API: what ``gateway`` exports, and that importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gateway

# What a plugin author may import from ``gateway`` (sorted); a change here is an API change.
EXPORTED = [
    "BadRequest", "Body", "Cidr", "DURATION_SCHEMA", "Duration", "Forbidden", "GatewayError",
    "GatewayTimeout", "Handler", "Metrics", "NotFound", "PayloadTooLarge", "Plugin", "PluginConfig",
    "PluginContext", "RedisHolder", "RedisPool", "RedisUnavailable", "Request", "Response",
    "ServiceUnavailable", "Size", "Unauthorized", "UpstreamError", "__version__", "check_url",
    "compose", "new_request_id", "parse_duration", "sane_request_id",
]


TEST_HELPERS = [
    "FakeUpstream", "MockSender", "ValidationError", "build_plugin", "make_request", "run_plugin",
    "upstream_request",
]


def test_exported_names() -> None:
    assert sorted(gateway.__all__) == EXPORTED


def test_test_helper_names() -> None:
    import gateway.testing

    assert sorted(gateway.testing.__all__) == TEST_HELPERS
    assert all(getattr(gateway.testing, name) is not None for name in TEST_HELPERS)


def test_every_exported_name_resolves() -> None:
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None, name
        assert name in dir(gateway), name


def test_exports_are_the_real_objects() -> None:
    from gateway.config_model import Duration
    from gateway.errors import GatewayError
    from gateway.metrics import Metrics
    from gateway.redis_pool import RedisPool

    assert gateway.Metrics is Metrics
    assert gateway.GatewayError is GatewayError
    assert gateway.RedisPool is RedisPool
    assert gateway.Duration is Duration


def test_unknown_name_is_an_attribute_error() -> None:
    assert not hasattr(gateway, "NoSuchName")


def test_import_does_not_load_prometheus_or_redis() -> None:
    # A fresh interpreter: this one has long since imported both.
    code = (
        "import sys, gateway\n"
        "loaded = [m for m in ('prometheus_client', 'redis') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "from gateway import Metrics\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_plugin_context_http_is_the_process_session_between_start_and_close() -> None:
    from gateway.clients import Clients
    from gateway.config_model import GatewaySettings

    clients = Clients()
    context = gateway.PluginContext("r", GatewaySettings(), {}, gateway.Metrics(), clients.redis,
                                    lambda: clients.session)
    with pytest.raises(RuntimeError, match="between startup and shutdown"):
        context.http  # noqa: B018 - the property raises
    await clients.start()
    try:
        assert context.http is clients.session
        with pytest.warns(DeprecationWarning, match="context.http"):
            assert context.client.session is clients.session
    finally:
        await clients.close()
    with pytest.raises(RuntimeError):
        context.http  # noqa: B018
