"""routes.toml text for the common test shape: one upstream, one route in front of it."""

from __future__ import annotations

DEFAULT_TIMEOUT = 'timeout = { connect = "1s", response = "5s" }'


def proxy_config(
    *targets: str,
    name: str = "svc",
    path: str = "/svc/{rest:.*}",
    rewrite: str | None = None,
    methods: tuple[str, ...] = (),
    gateway: str = "",
    upstream: str = DEFAULT_TIMEOUT,
    route: str = "",
    after: str = "",
) -> str:
    """One upstream ``svc`` with ``targets`` and one route ``name`` at ``path`` to it.

    ``gateway``, ``upstream`` and ``route`` are extra TOML lines placed in the ``[gateway]``,
    ``[upstreams.svc]`` and ``[[routes]]`` tables; ``after`` is TOML appended at the end
    (more routes, the route's ``[[routes.plugins]]``). Braces in ``path`` and ``rewrite`` are
    written as they appear in routes.toml.
    """
    listed = ", ".join(f'"{target}"' for target in targets)
    lines = ["[gateway]", gateway, "[upstreams.svc]", f"targets = [{listed}]", upstream,
             "[[routes]]", f'name = "{name}"', f'path = "{path}"', 'upstream = "svc"']
    if rewrite is not None:
        lines.append(f'rewrite = "{rewrite}"')
    if methods:
        lines.append("methods = [" + ", ".join(f'"{m}"' for m in methods) + "]")
    lines += [route, after]
    return "\n".join(line for line in lines if line) + "\n"


def plugin_table(use: str, **options: str) -> str:
    """A ``[[routes.plugins]]`` table; option values are TOML literals (``'"1s"'``, ``"3"``)."""
    return "\n".join([f'[[routes.plugins]]\nuse = "{use}"', *(f"{k} = {v}" for k, v in options.items())])
