"""The ``gateway`` command (docs/operations.md): run, check, schema, routes, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

import gateway
from gateway.config_load import ConfigError, LoadedConfig, load_config
from gateway.config_model import MAX_WORKERS, listen_problem


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="API gateway and orchestration layer.")
    parser.add_argument("--version", action="version", version=f"gateway {gateway.__version__}",
                        help="print the version (as gateway_build_info shows it) and exit")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="serve the routes of CONFIG (default ./routes.toml)")
    run.add_argument("config", nargs="?", default="routes.toml")
    run.add_argument("--listen", help="public HOST:PORT (overrides gateway.listen)")
    run.add_argument("--admin-listen", help='admin HOST:PORT (overrides gateway.admin_listen; "" for none)')
    run.add_argument("--workers", type=int, help="processes sharing the port (overrides gateway.workers)")
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--watch", action="store_true", help="reload when CONFIG changes (as SIGHUP does)")
    run.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--ready-file", help=argparse.SUPPRESS)
    run.add_argument("--worker", help=argparse.SUPPRESS)  # a supervised worker's number (label `worker`)
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="validate CONFIG and exit")
    check.add_argument("config")
    check.set_defaults(func=_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of routes.toml")
    schema.set_defaults(func=_schema)

    routes = sub.add_parser("routes", help="list the routes of CONFIG")
    routes.add_argument("config", nargs="?", default="routes.toml")
    routes.set_defaults(func=_routes)

    demo = sub.add_parser("demo", help="run the demo upstream services used by the example routes.toml")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=9001, help="first port (users; orders +1, recommendations +2)")
    demo.set_defaults(func=_demo)
    return parser


def _load(path: str) -> LoadedConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    # Warnings (a config that loads but most likely does not mean it) go to stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    try:
        return _validate(args)
    finally:
        logger.removeHandler(handler)


def _validate(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return 1
    # Building the runtime instantiates every plugin: option combinations fail here too.
    from gateway.clients import Clients
    from gateway.metrics import Metrics
    from gateway.runtime import Runtime

    try:
        Runtime(loaded, Metrics(), Clients())
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    print(loaded.summary())
    return 0


def _schema(_: argparse.Namespace) -> int:
    from gateway.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def _routes(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return 1
    rows = [("NAME", "METHODS", "PATH", "TERMINAL", "PLUGINS")]
    global_uses = [p.use for p in loaded.config.plugins]
    for route in loaded.config.routes:
        if route.upstream:
            terminal = f"upstream {route.upstream}"
        else:
            terminal = "steps " + ",".join(step.name for step in route.steps)
        chain = " > ".join(global_uses + [p.use for p in route.plugins]) or "-"
        rows.append((route.name, ",".join(route.method_list()), route.path, terminal, chain))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 0


def _option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options of ``gateway run`` that override the config."""
    if args.listen is not None and (problem := listen_problem(args.listen)):
        return f"--listen: {problem}, got {args.listen!r}"
    if args.admin_listen and (problem := listen_problem(args.admin_listen)):
        return f"--admin-listen: {problem}, got {args.admin_listen!r}"
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        return f"--workers: must be from 1 to {MAX_WORKERS}, got {args.workers}"
    return None


def _run(args: argparse.Namespace) -> int:
    from gateway import logs

    problem = _option_problem(args)
    if problem is not None:
        print(f"gateway: {problem}", file=sys.stderr)
        return 1
    logs.setup(args.log_format, args.log_level)
    loaded = _load(args.config)
    if loaded is None:
        return 1
    workers = args.workers if args.workers is not None else loaded.config.gateway.workers
    if workers > 1 and not args.supervised:
        from gateway.supervisor import MULTIPROC_ENV, prepare_multiprocess_dir

        if "prometheus_client" in sys.modules and not os.environ.get(MULTIPROC_ENV):
            # prometheus-client reads its mode at import: start again with the mode set.
            prepare_multiprocess_dir()
            os.execv(sys.executable, [sys.executable, "-m", "gateway", *sys.argv[1:]])
        prepare_multiprocess_dir()
        from gateway.supervisor import run_supervisor

        return run_supervisor(loaded, args, workers)
    from gateway.launch import run_single

    return run_single(loaded, args)


def _demo(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.demo import run_demo

    logs.setup("text", "info")
    run_demo(args.host, args.port)
    return 0


