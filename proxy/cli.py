"""The `rollout-proxy` command: one function per subcommand, `main(argv) -> int`.

Exit status: 0 on success, 2 for a bad configuration or bad arguments, 1 for a failure while
running.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.config import Config, load_config
from proxy.errors import ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _load(path: str) -> Config | None:
    try:
        return load_config(path, dict(os.environ))
    except ConfigError as exc:
        print(f"rollout-proxy: invalid config {path}: {exc}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    names = ", ".join(service.name for service in config.services)
    print(f"{args.config}: ok ({len(config.services)} service(s): {names})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from proxy.runtime import run_loop, serve

    config = _load(args.config)
    if config is None:
        print("rollout-proxy: not started; fix the config and try again", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return run_loop(serve(config, workers=args.workers, config_path=args.config))
    except ConfigError as exc:
        print(f"rollout-proxy: not started: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def cmd_worker(args: argparse.Namespace) -> int:
    from proxy.runtime import run_loop
    from proxy.workers.worker import serve_worker

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    return run_loop(serve_worker(config, args.port, args.channel_fd))


def _workers(value: str) -> int:
    count = int(value)
    if not 1 <= count <= 256:
        raise argparse.ArgumentTypeError("must be from 1 to 256")
    return count


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demorun import run_demo
    from proxy.runtime import run_loop

    return run_loop(
        run_demo(
            config_path=args.config,
            duration_s=args.duration,
            concurrency=args.concurrency,
            canary_error_rate=args.canary_error_rate,
        )
    )


def cmd_rollout(args: argparse.Namespace) -> int:
    from proxy import adminclient

    try:
        return adminclient.run(args.command, args.service, args.admin, args.json, args.token_env)
    except adminclient.AdminUnreachable as exc:
        print(f"rollout-proxy {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


_ROLLOUT_HELP = {
    "status": "show every rollout (or one): step, split, time in step, latest verdict",
    "promote": "advance SERVICE one step now",
    "pause": "freeze automatic moves of SERVICE (a guardrail breach still rolls back)",
    "resume": "let SERVICE move automatically again",
    "abort": "roll SERVICE back: everything to stable",
    "restart": "start SERVICE's rollout again from step 0",
}


def _add_rollout_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from proxy.adminclient import DEFAULT_ADMIN, DEFAULT_TOKEN_ENV

    for name, text in _ROLLOUT_HELP.items():
        command = sub.add_parser(name, help=text, description=text)
        command.add_argument("service", nargs="?", metavar="SERVICE", help="service name")
        command.add_argument(
            "--admin", default=DEFAULT_ADMIN, help=f"admin listener URL (default {DEFAULT_ADMIN})"
        )
        command.add_argument("--json", action="store_true", help="print the API's JSON")
        command.add_argument(
            "--token-env",
            default=DEFAULT_TOKEN_ENV,
            help=f"env var holding the admin token for mutations (default {DEFAULT_TOKEN_ENV})",
        )
        command.set_defaults(func=cmd_rollout)


def default_workers() -> int:
    from proxy.workers.supervisor import default_workers as count

    return count()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rollout-proxy",
        description="HTTP reverse proxy for progressive rollouts (stable/canary by tenant).",
    )
    parser.add_argument("--version", action="version", version=f"rollout-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate a config file (exit 2 naming the bad key)")
    check.add_argument("-c", "--config", required=True, help="path of the YAML config")
    check.set_defaults(func=cmd_check)

    run = sub.add_parser("run", help="serve until SIGTERM/SIGINT, then drain")
    run.add_argument("-c", "--config", required=True, help="path of the YAML config")
    run.add_argument(
        "--workers",
        type=_workers,
        default=default_workers(),
        help="processes serving the data port (default: one per CPU, here "
        f"{default_workers()}); 1 serves it in this process",
    )
    run.set_defaults(func=cmd_run)

    # Started by `run --workers N`, not by people: one data-plane worker process.
    worker = sub.add_parser("worker")
    worker.add_argument("-c", "--config", required=True)
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--channel-fd", type=int, required=True)
    worker.set_defaults(func=cmd_worker)

    demo = sub.add_parser(
        "demo", help="run demo upstreams, the proxy and a burst of multi-tenant traffic"
    )
    demo.add_argument(
        "-c", "--config", default=None, help="demo config (default: the built-in demo.yaml)"
    )
    demo.add_argument(
        "--duration", type=float, default=120.0, help="stop after this many seconds at most"
    )
    demo.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    demo.add_argument(
        "--canary-error-rate",
        type=float,
        default=0.0,
        help="fraction of canary responses that fail with 500",
    )
    demo.set_defaults(func=cmd_demo)
    _add_rollout_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
