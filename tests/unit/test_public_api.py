"""The public plugin API: what ``gateway`` exports, and that importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import gateway


def test_exported_names() -> None:
    assert sorted(gateway.__all__) == [
        "BadRequest",
        "Body",
        "Cidr",
        "DURATION_SCHEMA",
        "Duration",
        "Forbidden",
        "GatewayError",
        "GatewayTimeout",
        "Handler",
        "Metrics",
        "NotFound",
        "PayloadTooLarge",
        "Plugin",
        "PluginConfig",
        "PluginContext",
        "RedisHolder",
        "RedisPool",
        "RedisUnavailable",
        "Request",
        "Response",
        "ServiceUnavailable",
        "Size",
        "Unauthorized",
        "UpstreamError",
        "__version__",
        "check_url",
        "compose",
        "new_request_id",
        "parse_duration",
        "sane_request_id",
    ]


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
