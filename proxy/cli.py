"""The `rollout-proxy` command: one function per subcommand, `main(argv) -> int`.

Exit status: 0 on success, 2 for a bad configuration or bad arguments, 1 for a failure while
running. Every error says what to do next.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from proxy import __version__
from proxy.adminclient import ADMIN_URL_ENV, DEFAULT_ADMIN, DEFAULT_TOKEN_ENV
from proxy.build import describe
from proxy.config import Config, load_source
from proxy.errors import ConfigError, StateError

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2

_DOCS = "docs/configuration.md"
_CONFIG_ENV = f"""\
environment:
  The config names its secrets by environment variable, and they are read when it is loaded:
  admin.token_env   the admin API's bearer token (e.g. {DEFAULT_TOKEN_ENV}); unset: mutations
                    are refused
  key_env           of each jwt_claim identity rule: the JWT verification key (must be set)
  force.key_env     of a service with force enabled: the X-Rollout-Force token key (must
                    be set, at least 32 bytes)
  state.url_env     with state.backend: redis, the Redis URL (must be set)"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks (the examples are commands)."""


def _text(paragraph: str) -> str:
    """A description, wrapped (the formatter keeps line breaks as they are)."""
    return textwrap.fill(paragraph, 79)


def _load(path: str) -> Config | None:
    loaded = _load_source(path)
    return None if loaded is None else loaded[0]


def _load_source(path: str) -> tuple[Config, str] | None:
    """The config at `path` and its text, or None (said on stderr) when it is invalid."""
    try:
        return load_source(path, dict(os.environ))
    except ConfigError as exc:
        print(f"rollout-proxy: invalid config {path}: {exc}", file=sys.stderr)
        if not os.path.isfile(path):
            print(
                "rollout-proxy: pass the path of your YAML config with -c "
                f"(config/example.yaml is a complete one; every key: {_DOCS})",
                file=sys.stderr,
            )
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    names = ", ".join(service.name for service in config.services)
    print(f"{args.config}: ok ({len(config.services)} service(s): {names})")
    print(f"  data plane {config.listen}, admin {config.admin.listen}")
    token_env = config.admin.token_env
    if token_env and not os.environ.get(token_env):
        print(f"  note: {token_env} is not set: the admin API will refuse promote/pause/abort")
    elif not token_env:
        print("  note: no admin.token_env: the admin API will refuse promote/pause/abort")
    for line in _stable_notes(config):
        print(f"  note: {line}")
    return EXIT_OK


def _stable_notes(config: Config) -> list[str]:
    """Where the state file's record of the stable pool differs from the config file's
    (a release promoted another pool): the store's is what is served."""
    from proxy.releases import drift_of
    from proxy.store.file import FileStore

    if config.state.backend != "file" or config.state.path is None:
        return []
    try:
        books = FileStore(config.state.path).read_books()
    except StateError as exc:
        return [f"cannot read the releases in the state file: {exc}"]
    notes = []
    for service in config.services:
        differs = drift_of(service, books.get(service.name))
        if differs:
            notes.append(f"service {service.name}: {differs}")
    return notes


def cmd_run(args: argparse.Namespace) -> int:
    from proxy.runtime import run_loop, serve

    loaded = _load_source(args.config)
    if loaded is None:
        print("rollout-proxy: not started; fix the config and try again", file=sys.stderr)
        return EXIT_CONFIG
    config, source = loaded
    _warn_stale_build()
    try:
        return run_loop(serve(config, workers=args.workers, config_path=args.config, source=source))
    except ConfigError as exc:
        print(f"rollout-proxy: not started: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(
            f"rollout-proxy: not started: {exc}\n"
            f"rollout-proxy: the data plane listens on {config.listen} (`listen`) and the admin "
            f"API on {config.admin.listen} (`admin.listen`): stop what holds the address, or "
            "change the config",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def _warn_stale_build() -> None:
    from proxy.build import stale_modules

    stale = stale_modules(Path(__file__).parent)
    if stale:
        names = ", ".join(str(path) for path in stale)
        print(
            f"rollout-proxy: warning: edited after their compiled modules were built, so the "
            f"edits do not run: {names}; rebuild (ROLLOUT_PROXY_COMPILE=1 pip install -e .) "
            "or delete their .so files",
            file=sys.stderr,
        )


def cmd_worker(args: argparse.Namespace) -> int:
    from proxy.runtime import run_loop
    from proxy.workers.worker import serve_worker

    return run_loop(serve_worker(args.port, args.channel_fd))


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


_ROLLOUT = {
    "status": (
        "show every rollout (or SERVICE's): status, step, what the step exposes, canary "
        "percent, time in step, latest verdict",
        "rollout-proxy status\n  rollout-proxy status checkout --admin http://10.0.0.5:9090 --json",
    ),
    "promote": (
        "advance SERVICE one step now (conditional on the version seen: two people promoting "
        "at once move it one step)",
        "rollout-proxy promote checkout",
    ),
    "pause": (
        "freeze automatic moves of SERVICE (a guardrail breach still rolls back)",
        "rollout-proxy pause checkout",
    ),
    "resume": ("let SERVICE move automatically again", "rollout-proxy resume checkout"),
    "abort": ("roll SERVICE back: everything to stable", "rollout-proxy abort checkout"),
    "restart": (
        "start SERVICE's rollout again from its first step (or its baseline period)",
        "rollout-proxy restart checkout",
    ),
}


def _rollout_epilog(name: str, example: str) -> str:
    label = "examples" if "\n" in example else "example"
    lines = [f"{label}:\n  {example}", "", "environment:"]
    lines.append(f"  {ADMIN_URL_ENV}    the admin listener's URL when --admin is not given")
    if name == "status":
        lines.append("  (status needs no token)")
    else:
        lines.append(
            f"  {DEFAULT_TOKEN_ENV}  the admin token: the value of the variable the proxy's\n"
            "                       admin.token_env names (--token-env NAME reads another)"
        )
    lines.append("\nexit status: 0 done, 1 refused (the reason is printed) or admin unreachable")
    return "\n".join(lines)


def _add_rollout_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, (text, example) in _ROLLOUT.items():
        command = sub.add_parser(
            name,
            help=text,
            description=_text(text + "."),
            epilog=_rollout_epilog(name, example),
            formatter_class=_Formatter,
        )
        command.add_argument(
            "service",
            nargs="?",
            metavar="SERVICE",
            help="one service (default: all)"
            if name == "status"
            else "the service's name (required; rollout-proxy status lists them)",
        )
        _admin_options(command)
        command.set_defaults(func=cmd_rollout)


def cmd_reload(args: argparse.Namespace) -> int:
    from proxy import adminclient

    try:
        return adminclient.reload(args.admin, args.json, args.token_env)
    except adminclient.AdminUnreachable as exc:
        print(f"rollout-proxy reload: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_release(args: argparse.Namespace) -> int:
    from proxy import adminclient, releaseclient

    try:
        if args.release_command == "start":
            change = {
                k: v
                for k, v in (
                    ("commit", args.commit),
                    ("url", args.url),
                    ("summary", args.summary),
                    ("author", args.author),
                )
                if v
            }
            if args.route:
                change["routes"] = list(args.route)
            token = os.environ.get(args.token_env)
            return releaseclient.start(
                args.admin, args.service, args.version, args.canary, args.steps, change,
                args.supersede, token, args.json, checks=args.checks,
            )  # fmt: skip
        if args.release_command == "list":
            return releaseclient.list_releases(args.admin, args.service, args.json)
        if args.release_command == "show":
            return releaseclient.show(args.admin, args.service, args.version, args.json)
        return releaseclient.wait(args.admin, args.service, args.version, args.timeout, args.poll)
    except adminclient.AdminUnreachable as exc:
        print(f"rollout-proxy release: {exc}", file=sys.stderr)
        return releaseclient.EXIT_ERROR


def _add_release(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "start, list, show and wait for releases of a service (what a CI job calls)"
    release = sub.add_parser(
        "release",
        help=text,
        description=_text(
            text + ". A release is a version deployed on its own upstreams: the proxy rolls it "
            "out step by step, judges it, and on completion makes its upstreams the stable pool."
        ),
        epilog="examples:\n  rollout-proxy release start shop --version 1.4.2 --canary "
        "http://10.0.0.7:8080\n  rollout-proxy release wait shop --version 1.4.2 --timeout 30m"
        f"\n\nenvironment:\n  {ADMIN_URL_ENV}    the admin listener's URL when --admin is not "
        f"given\n  {DEFAULT_TOKEN_ENV}  the admin token, for release start (--token-env NAME "
        "reads another)\n  ROLLOUT_ACTOR        who starts it, recorded with the release "
        "(else $GITHUB_ACTOR, $CI_JOB_NAME, $USER)\n\nrelease wait exits 0 completed, 1 rolled "
        "back or aborted, 3 timeout, 2 error",
        formatter_class=_Formatter,
    )
    commands = release.add_subparsers(dest="release_command", required=True, metavar="COMMAND")
    start = commands.add_parser("start", help="start a release (the same version again: no-op)")
    start.add_argument("service", metavar="SERVICE")
    start.add_argument("--version", required=True, metavar="V")
    start.add_argument(
        "--canary", nargs="+", default=[], metavar="URL",
        help="the release's upstreams (left out for a blue/green pair: the idle pool)",
    )  # fmt: skip
    start.add_argument("--steps", metavar="FILE", help="YAML list of steps (default: configured)")
    start.add_argument(
        "--checks", metavar="FILE",
        help="YAML list of checks the release brings ({route: ...}, {errors: ...}, {latency: ...})",
    )  # fmt: skip
    start.add_argument(
        "--route", action="append", default=[], metavar="PREFIX",
        help="a route the change touches: judged by its own error-rate check (repeatable)",
    )  # fmt: skip
    start.add_argument("--commit", default="")
    start.add_argument("--url", default="", help="a link to the change")
    start.add_argument("--summary", default="")
    start.add_argument("--author", default="")
    start.add_argument("--supersede", action="store_true", help="roll back one in progress")
    listing = commands.add_parser("list", help="the service's releases, newest first")
    listing.add_argument("service", metavar="SERVICE")
    show = commands.add_parser("show", help="one release (default: the newest)")
    show.add_argument("service", metavar="SERVICE")
    show.add_argument("version", nargs="?", metavar="V")
    wait = commands.add_parser("wait", help="follow a release until it ends")
    wait.add_argument("service", metavar="SERVICE")
    wait.add_argument("--version", default=None, metavar="V")
    wait.add_argument("--timeout", type=_seconds, default=3600.0, metavar="D")
    wait.add_argument("--poll", type=_seconds, default=1.0, metavar="D")
    for command in (start, listing, show, wait):
        _admin_options(command)
        command.set_defaults(func=cmd_release)


def cmd_force_token(args: argparse.Namespace) -> int:
    from proxy.forcetoken import force_token

    try:
        print(force_token(args.service, args.variant, args.ttl, args.key_env, os.environ))
    except ConfigError as exc:
        print(f"rollout-proxy force-token: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def _add_force_token(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from proxy.forcetoken import DEFAULT_KEY_ENV, DEFAULT_TTL

    text = "print a signed, expiring X-Rollout-Force value that sends a tester to one variant"
    command = sub.add_parser(
        "force-token",
        help=text,
        description=_text(
            text + " of SERVICE, from any peer, while it holds. The service must have "
            "force.enabled and force.key_env in the config, and the key given here must be the "
            "one that variable holds for the proxy. Forced requests are counted in "
            "rollout_forced_requests_total and never judged."
        ),
        epilog='example:\n  curl -H "X-Rollout-Force: $(rollout-proxy force-token shop canary '
        f'--ttl 1h)" http://proxy:8080/\n\nenvironment:\n  {DEFAULT_KEY_ENV}    the token key '
        "(--key-env NAME reads another: the variable force.key_env names)\n\nexit status: 0 "
        "printed, 2 bad arguments or no key",
        formatter_class=_Formatter,
    )
    command.add_argument("service", metavar="SERVICE", help="the service's name")
    command.add_argument("variant", metavar="VARIANT", help="canary or stable")
    command.add_argument(
        "--ttl",
        default=DEFAULT_TTL,
        metavar="D",
        help=f"how long the token holds, at most 168h (default: {DEFAULT_TTL})",
    )
    command.add_argument(
        "--key-env",
        default=DEFAULT_KEY_ENV,
        metavar="NAME",
        help=f"environment variable holding the key (default: {DEFAULT_KEY_ENV})",
    )
    command.set_defaults(func=cmd_force_token)


def _seconds(value: str) -> float:
    from proxy.config import reader

    try:
        return reader.duration(value, "--timeout")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from exc


def _add_reload(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "re-read a running proxy's config file and swap it in without a restart (as SIGHUP does)"
    command = sub.add_parser(
        "reload",
        help=text,
        description=_text(
            text + ". The file is validated whole first: an invalid one, or one that changes "
            "what needs a restart (listen, admin, state, access_log), changes nothing and the "
            "reason is printed. Requests in flight finish under the old config; connections "
            "stay open; rollouts whose spec is unchanged carry on with their evidence."
        ),
        epilog="example:\n  rollout-proxy reload --admin http://127.0.0.1:9090\n\n"
        f"environment:\n  {ADMIN_URL_ENV}    the admin listener's URL when --admin is not given\n"
        f"  {DEFAULT_TOKEN_ENV}  the admin token (--token-env NAME reads another)\n\n"
        "exit status: 0 applied (or nothing to change), 1 refused, invalid, or admin unreachable",
        formatter_class=_Formatter,
    )
    _admin_options(command)
    command.set_defaults(func=cmd_reload)


def _admin_options(command: argparse.ArgumentParser) -> None:
    """--admin, --json and --token-env, as every command that talks to the admin API has."""
    command.add_argument(
        "--admin",
        default=os.environ.get(ADMIN_URL_ENV) or DEFAULT_ADMIN,
        metavar="URL",
        help=f"the proxy's admin listener (its admin.listen) (default: ${ADMIN_URL_ENV}, "
        f"else {DEFAULT_ADMIN})",
    )
    command.add_argument(
        "--json", action="store_true", help="print the API's JSON instead of a table"
    )
    command.add_argument(
        "--token-env",
        default=DEFAULT_TOKEN_ENV,
        metavar="NAME",
        help=f"environment variable holding the admin token for mutations "
        f"(default: {DEFAULT_TOKEN_ENV})",
    )


def default_workers() -> int:
    from proxy.workers.supervisor import default_workers as count

    return count()


def _config_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "-c", "--config", required=True, metavar="FILE", help=f"the YAML config (required; {_DOCS})"
    )


def _add_check(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "validate a config file: exit 0 and a summary, or exit 2 naming the bad key"
    check = sub.add_parser(
        "check",
        help=text,
        description=_text(text + ". Nothing is started and nothing is contacted."),
        epilog=f"example:\n  JWT_KEY=$(openssl rand -hex 32) rollout-proxy check -c "
        f"config/example.yaml\n\n{_CONFIG_ENV}\n\nexit status: 0 valid, 2 invalid",
        formatter_class=_Formatter,
    )
    _config_option(check)
    check.set_defaults(func=cmd_check)


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = (
        "serve: the data plane, the admin listener and the controller, until SIGTERM/SIGINT; "
        "SIGHUP reloads the config file"
    )
    run = sub.add_parser(
        "run",
        help=text,
        description=_text(
            text + ". On the signal readiness fails first (limits.drain_notice), then in-flight "
            "requests finish (limits.drain). The first line on stderr names both listeners' "
            'URLs; standard output carries the access log when access_log.path is "-".'
        ),
        epilog="example:\n  ROLLOUT_ADMIN_TOKEN=$(openssl rand -hex 24) rollout-proxy run -c "
        f"proxy.yaml\n\n{_CONFIG_ENV}\n\nexit status: 0 after a drain, 1 when a listener cannot "
        "start, 2 for an invalid config",
        formatter_class=_Formatter,
    )
    _config_option(run)
    workers = default_workers()
    run.add_argument(
        "--workers",
        type=_workers,
        default=workers,
        metavar="N",
        help=f"processes serving the data port (default: {workers}, one per CPU); 1 serves it "
        "in this process",
    )
    run.set_defaults(func=cmd_run)


def _add_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Started by `run --workers N`, not by people: one data-plane worker process.
    worker = sub.add_parser(
        "worker",
        description="one data-plane worker process, started by `rollout-proxy run --workers N` "
        "(not meant to be run by hand)",
    )
    worker.add_argument("--port", type=int, required=True, help="the data port to share")
    worker.add_argument(
        "--channel-fd", type=int, required=True, help="the socket to the main process"
    )
    worker.set_defaults(func=cmd_worker)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "run demo upstreams, the real proxy between them and steady multi-tenant traffic"
    demo = sub.add_parser(
        "demo",
        help=text,
        description=_text(
            text + ", with a live view of the rollout, then its outcome and decision journal. "
            "Everything runs on loopback on free ports; no upstream of yours is needed."
        ),
        epilog="examples:\n  rollout-proxy demo\n  rollout-proxy demo --canary-error-rate 0.05"
        "    # a bad canary, rolled back on evidence\n\nenvironment: none (a config given with "
        "-c may name variables, as for run)",
        formatter_class=_Formatter,
    )
    demo.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help="demo config; its upstreams are replaced by the demo's (default: the packaged "
        "demo.yaml)",
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="stop after this many seconds at most (default: 120)",
    )
    demo.add_argument(
        "--concurrency", type=int, default=16, metavar="N", help="requests in flight (default: 16)"
    )
    demo.add_argument(
        "--canary-error-rate",
        type=float,
        default=0.0,
        metavar="RATE",
        help="fraction of canary responses that fail with 500, 0 to 1 (default: 0)",
    )
    demo.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rollout-proxy",
        description=_text(
            "HTTP reverse proxy for progressive rollouts: each tenant or user is sent to the "
            "stable or the canary version of a service by the current rollout step, and the "
            "rollout advances or rolls back on evidence."
        ),
        epilog="examples:\n  rollout-proxy demo\n  rollout-proxy check -c proxy.yaml\n"
        "  rollout-proxy run -c proxy.yaml\n  rollout-proxy status\n\n"
        "`rollout-proxy COMMAND --help` describes each command. Every config key: " + _DOCS,
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"rollout-proxy {__version__} ({describe()})"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_check(sub)
    _add_run(sub)
    _add_worker(sub)
    _add_demo(sub)
    _add_rollout_commands(sub)
    _add_reload(sub)
    _add_release(sub)
    _add_force_token(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
