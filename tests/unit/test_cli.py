"""The ``gateway`` command run as a user runs it: a subprocess (docs/operations.md)."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, plugin_table, proxy_config

ROOT = Path(__file__).resolve().parents[2]

# Two upstreams, a global request_id, the route "users" with ip_filter and headers, the route "orders".
GOOD = proxy_config(
    "http://127.0.0.1:9001", "http://127.0.0.1:9002", name="users", path="/api/users/{rest:.*}",
    rewrite="/users/{rest}", methods=("GET", "POST"), gateway='timeout = "5s"', upstream="",
    after="\n".join([
        plugin_table("ip_filter", allow='["10.0.0.0/8"]'),
        plugin_table("headers", response='{ set = { "Cache-Control" = "no-store" } }'),
        '[[plugins]]\nuse = "request_id"',
        '[upstreams.orders]\ntargets = ["http://127.0.0.1:9003"]',
        '[[routes]]\nname = "orders"\npath = "/api/orders"\nupstream = "orders"',
    ]),
)

# Three problems: workers = 0, the misspelt "listn", and a CIDR with a /33 prefix.
BAD = proxy_config(
    "http://127.0.0.1:9001", name="users", path="/api/users", upstream="",
    gateway='workers = 0\nlistn = "0.0.0.0:8080"',
    after=plugin_table("request_id") + "\n" + plugin_table("ip_filter", allow='["10.0.0.0/33"]'),
)


def gateway(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ALICE_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True, text=True, timeout=30, cwd=cwd or ROOT, env=env, check=False,
    )


def write(tmp_path: Path, text: str, name: str = "routes.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_check_good_file_prints_one_summary_line(tmp_path: Path) -> None:
    result = gateway("check", str(write(tmp_path, GOOD)))
    assert result.returncode == 0, result.stderr
    # global request_id once, ip_filter and headers on "users"
    assert result.stdout.splitlines() == ["ok: 2 routes, 2 upstreams, 3 plugins"]


def test_check_bad_file_lists_every_error_with_file_and_location(tmp_path: Path) -> None:
    path = write(tmp_path, BAD, "bad.toml")
    result = gateway("check", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 3, lines
    for line in lines:
        assert re.match(rf"^{re.escape(str(path))}: \S.*: \S", line), line
    assert f"{path}: gateway.workers: must be a positive integer, got 0" in lines
    assert f"{path}: gateway.listn: unknown key (did you mean 'listen'?)" in lines
    assert any(line.startswith(f"{path}: routes[0].plugins[1] (ip_filter).allow[0]: ") for line in lines)


def test_check_reports_a_plugin_that_cannot_be_built(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('allow = ["10.0.0.0/8"]', ""))
    result = gateway("check", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: routes[0].plugins[0] (ip_filter): needs `allow` or `deny` (a list of CIDRs)"
    ]


def test_check_missing_file_fails_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = gateway("check", str(missing))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{missing}: cannot read")


def test_repo_routes_toml_passes_check() -> None:
    result = gateway("check", str(ROOT / "routes.toml"), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"ok: \d+ routes, \d+ upstreams, \d+ plugins\n", result.stdout), result.stdout


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    result = gateway("schema")
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def test_schema_is_json_schema_of_the_config(schema: dict[str, Any]) -> None:
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    assert {"gateway", "upstreams", "routes", "plugins", "consumers"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False
    for ref in _refs(schema):  # every reference resolves inside the document
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in schema["$defs"], ref


def test_schema_has_a_variant_per_builtin_plugin(schema: dict[str, Any]) -> None:
    variants = schema["$defs"]["PluginSpec"]["anyOf"]
    by_use = {v["properties"]["use"]["const"]: v for v in variants if "const" in v["properties"]["use"]}
    assert {"request_id", "headers", "cors", "ip_filter"} <= set(by_use)
    for variant in by_use.values():
        assert "use" in variant["required"]
        assert variant["additionalProperties"] is False
    assert {"allow", "deny"} <= set(by_use["ip_filter"]["properties"])
    assert {"origins", "methods", "headers", "credentials", "max_age"} <= set(by_use["cors"]["properties"])
    assert {"header", "trust_incoming"} <= set(by_use["request_id"]["properties"])
    assert {"request", "response"} <= set(by_use["headers"]["properties"])
    # routes' and the global plugin lists use these variants
    route = schema["$defs"]["RouteConfig"]
    assert route["properties"]["plugins"]["items"] == {"$ref": "#/$defs/PluginSpec"}
    assert schema["properties"]["plugins"]["items"] == {"$ref": "#/$defs/PluginSpec"}


def _duration_properties(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "(ms|s|m|h)" in str(node.get("pattern", "")) and node.get("type") == "string":
            found.append((where, node))
        for key, value in node.items():
            found += _duration_properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _duration_properties(value, f"{where}/{index}")
    return found


def test_schema_defaults_of_durations_are_duration_strings(schema: dict[str, Any]) -> None:
    # An editor offers the default on completion; `timeout = 30.0` would then fail `gateway check`.
    timeout = schema["$defs"]["GatewaySettings"]["properties"]["timeout"]
    assert timeout["type"] == "string"
    bad = {
        where: prop["default"]
        for where, prop in _duration_properties(schema)
        if "default" in prop and not (isinstance(prop["default"], str) and re.match(prop["pattern"], prop["default"]))
    }
    assert bad == {}


def test_routes_prints_a_table_of_routes(tmp_path: Path) -> None:
    result = gateway("routes", str(write(tmp_path, GOOD)))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "METHODS", "PATH", "TERMINAL", "PLUGINS"]
    assert len(rows) == 2
    users = rows[0].split(None, 3)
    assert users[:3] == ["users", "GET,POST", "/api/users/{rest:.*}"]
    assert re.search(r"upstream svc\s+request_id > ip_filter > headers$", rows[0]), rows[0]
    orders = rows[1].split(None, 3)
    assert orders[0] == "orders"
    assert orders[2] == "/api/orders"
    assert re.search(r"upstream orders\s+request_id$", rows[1]), rows[1]
    # the columns line up
    assert rows[0].index("/api/users") == rows[1].index("/api/orders") == header.index("PATH")


def test_routes_on_a_bad_file_fails_like_check(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    result = gateway("routes", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"{path}: gateway.workers: must be a positive integer, got 0" in result.stderr.splitlines()


# --- warnings and inputs that used to end in a traceback ------------------------------------


def test_check_warns_about_trusted_proxies_of_everyone_on_stderr_and_still_passes(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('timeout = "5s"', 'timeout = "5s"\ntrusted_proxies = ["0.0.0.0/0"]'))
    result = gateway("check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["ok: 2 routes, 2 upstreams, 3 plugins"]
    [warning] = result.stderr.splitlines()
    assert warning.startswith(f"WARNING: {path}: gateway.trusted_proxies[0]: '0.0.0.0/0' trusts every peer")


@pytest.mark.parametrize(
    "text",
    ["a = " + "[" * 3000 + "]" * 3000, "a = " + "{b = " * 3000 + "1" + "}" * 3000, "[" + ".".join("a" * 3000) + "]"],
)
def test_check_a_deeply_nested_file_fails_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(text)
    result = gateway("check", str(path))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{path}: ")
    assert line.endswith("nested deeper than 64 levels (tables and arrays inside one another)")


def test_check_refuses_a_route_regex_that_backtracks(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("/api/users/{rest:.*}", "/api/users/{rest:(a+)+b}"))
    result = gateway("check", str(path))
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{path}: routes[0].path: {{rest:(a+)+b}} can match the same text")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--listen", "127.0.0.1:99999"], "gateway: --listen: must be \"HOST:PORT\": the port must be a number from 0"),
        (["--listen", "8080"], "gateway: --listen: must be \"HOST:PORT\", such as"),
        (["--admin-listen", "local host:1"], "gateway: --admin-listen: must be \"HOST:PORT\" without spaces"),
        (["--workers", "0"], "gateway: --workers: must be from 1 to 1024, got 0"),
        (["--workers", "100000000"], "gateway: --workers: must be from 1 to 1024, got 100000000"),
    ],
)
def test_run_refuses_bad_options_in_one_line(tmp_path: Path, options: list[str], message: str) -> None:
    result = gateway("run", str(write(tmp_path, GOOD)), *options)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(message), line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_run_with_a_plugin_that_cannot_be_built_fails_like_check(tmp_path: Path, workers: str) -> None:
    path = write(tmp_path, GOOD.replace('allow = ["10.0.0.0/8"]', ""))
    result = gateway("run", str(path), "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", "",
                     "--workers", workers)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: routes[0].plugins[0] (ip_filter): needs `allow` or `deny` (a list of CIDRs)"
    ]


@pytest.mark.parametrize(
    ("error", "address", "option", "expected"),
    [
        (OSError(errno.EADDRINUSE, "in use"), "0.0.0.0:8080", "gateway.listen",
         "cannot listen on 0.0.0.0:8080 (gateway.listen): address already in use"),
        (OSError(errno.EACCES, "denied"), "0.0.0.0:80", "--listen",
         "cannot listen on 0.0.0.0:80 (--listen): permission denied (ports below 1024 need root or "
         "CAP_NET_BIND_SERVICE)"),
        (OSError(errno.EACCES, "denied"), "0.0.0.0:8080", "--listen",
         "cannot listen on 0.0.0.0:8080 (--listen): permission denied"),
        (OSError(errno.EADDRNOTAVAIL, "nope"), "192.0.2.1:8080", "gateway.admin_listen",
         "cannot listen on 192.0.2.1:8080 (gateway.admin_listen): address not available"),
        (socket.gaierror(socket.EAI_NONAME, "unknown"), "nohost:1", "--admin-listen",
         "cannot listen on nohost:1 (--admin-listen): unknown host name"),
    ],
)
def test_listen_failures_are_named_in_one_line(error: OSError, address: str, option: str, expected: str) -> None:
    from gateway.launch import listen_failure

    failure = listen_failure(error, address, option)
    assert failure is not None
    assert str(failure).startswith(expected)
    assert "\n" not in str(failure)


def test_other_os_errors_are_not_listen_failures() -> None:
    from gateway.launch import listen_failure

    assert listen_failure(OSError(errno.ECONNREFUSED, "refused"), "0.0.0.0:1", "--listen") is None
