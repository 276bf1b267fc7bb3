"""What the unit tests share: a settable clock, routes.toml text with one route to the
``users`` upstream, and loading such text into a config or into its located errors."""

from __future__ import annotations

import textwrap
from typing import Generic, TypeVar

import pytest

from gateway.config_load import ConfigError, LoadedConfig, load_text
from gateway.registry import Registry
from tests.support.config import plugin_table, proxy_config

N = TypeVar("N", int, float)


class Clock(Generic[N]):
    """A clock a test sets: calling it reads ``now``; ``clock.now += 5`` moves time on."""

    def __init__(self, now: N) -> None:
        self.now: N = now

    def __call__(self) -> N:
        return self.now


def users_upstream(extra: str = "", targets: str = '["http://127.0.0.1:9001"]') -> str:
    """The ``users`` upstream at ``targets`` (a TOML array); ``extra`` adds lines to its table."""
    return f"[upstreams.users]\ntargets = {targets}\n{extra}\n"


USERS = users_upstream()


def users_route(route: str = "", *, path: str = "/r", upstreams: str = USERS) -> str:
    """``upstreams`` (by default the ``users`` upstream) and one route ``r`` at ``path`` to
    ``users``; ``route`` is TOML placed at the end, in the route's table: more keys, its
    ``[[routes.plugins]]``, or further tables."""
    return f"{upstreams}[[routes]]\nname = \"r\"\npath = '''{path}'''\nupstream = \"users\"\n{route}\n"


def load(text: str, env: dict[str, str] | None = None, registry: Registry | None = None) -> LoadedConfig:
    """Load routes.toml text (indented or not) as the file ``routes.toml``."""
    return load_text(textwrap.dedent(text), "routes.toml", env or {}, registry)


def config_error(
    text: str, env: dict[str, str] | None = None, registry: Registry | None = None, *, source: str = "routes.toml"
) -> ConfigError:
    """The error loading ``text`` raises (fails the test when the config loads); its message is
    its lines, one a problem."""
    with pytest.raises(ConfigError) as caught:
        load_text(textwrap.dedent(text), source, env or {}, registry)
    error = caught.value
    assert str(error) == "\n".join(error.lines())
    return error


def config_errors(text: str, env: dict[str, str] | None = None, registry: Registry | None = None) -> dict[str, str]:
    """location -> the messages there, one a line (fails the test when the config loads)."""
    found: dict[str, str] = {}
    for location, message in config_error(text, env, registry).problems:
        found[location] = f"{found[location]}\n{message}" if location in found else message
    return found


def plugin_route(use: str, **options: str) -> str:
    """routes.toml text: one route ``svc`` at ``/svc`` running the plugin ``use`` with ``options``
    (TOML literals) in front of an upstream nothing listens on."""
    return proxy_config("http://127.0.0.1:9", path="/svc", upstream="", after=plugin_table(use, **options))
