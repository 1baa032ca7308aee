"""Loopback benchmark: rollout-proxy against nginx, HAProxy, a bare Python proxy and the upstream.

Everything runs on 127.0.0.1 with ports found by binding port 0. An nginx upstream (two server
blocks, "stable" and "canary", each adding an ``X-Pool`` header) and the load generator (wrk) are
pinned to the first CPU; the proxy under test and the reference proxies to the second. Rounds are
interleaved (nginx, haproxy, rollout-proxy, bare, direct, nginx, ...) and medians reported.

``bare`` is loadtests/bare.py: asyncio.Protocol + httptools both ways with a keep-alive upstream
pool and nothing else (no routing, no metrics), the floor for a Python proxy on this stack. The
report relates rollout-proxy to it (RPS and CPU per request) as well as to nginx.

rollout-proxy runs as shipped: metrics on, and a rollout in progress (a 10% canary step held for
a day), so the controller's analysis counts every request; the benchmark checks through the
admin API that it did.

Usage::

    python loadtests/bench.py                      # 3 rounds x 10 s, every scenario but soak
    python loadtests/bench.py --quick              # smoke run: 1 round x 2 s, tiny GET only
    python loadtests/bench.py --targets direct,nginx --scenarios tiny --json out.json
    python loadtests/bench.py --scenarios soak     # RSS over 2 million requests (minutes)
    python loadtests/bench.py --scenarios tiny,tiny1,churn --tls   # the proxies listen with TLS
    python loadtests/bench.py --tls --scenarios h2 --targets nginx,haproxy,rollout-proxy
                                                   # h2load, 100 streams over 8 connections:
                                                   # nginx `ssl http2`, HAProxy `alpn h2,http/1.1`
    python loadtests/bench.py --tls --scenarios grpc --targets nginx,haproxy,rollout-proxy,direct
                                                   # gRPC unary echo, 100 streams x 8 conns,
                                                   # to grpcio servers (loadtests/grpc_upstream.py)
    python loadtests/bench.py --targets rollout-proxy --scenarios tiny --shadow 10
                                                   # a shadow step mirroring 10% (--workers 1)

The grpc scenario runs proxies of their own in front of two grpcio servers (stable, canary;
loadtests/grpc_upstream.py, 64 threads each, on the load CPU): nginx (`grpc_pass`, keep-alive),
HAProxy (`server ... proto h2`), rollout-proxy (`upstreams: {protocol: h2c}`), and `direct`
(h2load straight at the stable server over h2c: the upstream's own ceiling, printed after the
table). h2load POSTs one 5-byte-prefixed 32-byte message with `content-type: application/grpc`
and `te: trailers`. h2load counts HTTP statuses only, so every target first gets 200 unary calls
from a grpcio client, each of which must end with grpc-status 0 and echo its bytes, and each
run's 2xx count must not exceed the calls the servers say they served (`upstream calls`).

Exit status: 0 ok, 1 a target failed its checks or a run had errors, 2 a required tool is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http.client
import importlib
import ipaddress
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
BODY_BYTES = MIB
ALL_TARGETS = ("direct", "nginx", "haproxy", "rollout-proxy", "bare")
ALL_SCENARIOS = ("tiny", "tiny1", "body", "idle", "churn", "soak", "h2", "grpc")
DEFAULT_SCENARIOS = ("tiny", "tiny1", "body", "idle", "churn")  # soak, h2, grpc: by name
# Scenarios over HTTP/2 (TLS with ALPN h2 to the proxies): they need --tls and h2load.
H2_SCENARIOS = ("h2", "grpc")
# Targets that speak HTTP/2 in the h2 scenario (the others are left out of it).
H2_TARGETS = ("nginx", "haproxy", "rollout-proxy")
ROTATION = ("nginx", "haproxy", "rollout-proxy", "bare", "direct")
# The grpc scenario's targets: proxies of their own in front of grpcio servers, and `direct`
# (h2load straight at the stable grpcio server over h2c: the upstream's own ceiling).
GRPC_TARGETS = ("nginx", "haproxy", "rollout-proxy", "direct")
GRPC_SCRIPT = REPO_ROOT / "loadtests" / "grpc_upstream.py"
GRPC_METHOD = "/bench.Echo/Unary"
GRPC_MESSAGE = b"rollout-proxy bench echo 0123456"  # 32 bytes, echoed back
GRPC_THREADS = 64  # handler threads of each grpcio server
GRPC_PREFLIGHT_CALLS = 200
BARE_SCRIPT = REPO_ROOT / "loadtests" / "bare.py"
BARE_MODULES = ("httptools", "uvloop")  # what bare.py needs besides the standard library
INSTALL_HINT = (
    "install them with: apt-get install -y wrk nginx-light   (HAProxy: haproxy; h2load: "
    "nghttp2-client)"
)
TENANTS = 1000
SOAK_IDS = 50_000  # distinct tenant ids in the soak: more than the proxy's routing caches hold
FLAT_RSS = 0.10  # the soak's RSS counts as flat when the last sample is within 10% of the first
CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---------------------------------------------------------------------------------------------
# Configuration templates (from the reference configs; ports substituted, `reuseport` dropped so
# that a port taken by someone else makes the bind fail instead of silently sharing traffic).
# ---------------------------------------------------------------------------------------------

NGINX_COMMON = """\
worker_processes 1;
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid nginx.pid;
error_log stderr warn;

events {{
    worker_connections {worker_connections};
}}
"""

NGINX_HTTP_COMMON = """\
    access_log off;
    server_tokens off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path tmp/client_body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
"""

UPSTREAM_SERVER = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096{http2};
        location / {{
            add_header X-Pool {pool};
            return 200 "ok\\n";
        }}
        # 1 MiB response to GET and POST; POST bodies up to 2 MiB are read and discarded
        # (the static handler answers POST with 405, turned into a 200 with the file).
        location = /body {{
            add_header X-Pool {pool} always;
            root data;
            client_max_body_size 2m;
            client_body_buffer_size 2m;
            error_page 405 =200 $uri;
        }}
    }}
"""

# The proxies' TLS under --tls, as nginx is usually set up: TLS 1.2 and 1.3, a session cache
# and tickets (rollout-proxy: tickets, OpenSSL's default; HAProxy: its defaults).
NGINX_TLS = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
"""

# `keepalive` (idle upstream connections kept) is above the h2 and grpc scenarios' 800
# concurrent streams, each of which holds an upstream connection in nginx: with fewer, nginx
# closes and reopens upstream connections all through those runs (HAProxy's `http-reuse
# always` keeps them). The HTTP/1.1 scenarios never hold more than 256.
PROXY_NGINX_HTTP = """\
    client_max_body_size 2m;

    upstream stable {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
        keepalive_requests 100000000;
        keepalive_timeout 120s;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096{ssl};
{tls_lines}        location / {{
            proxy_pass http://stable;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
"""

HAPROXY_CFG = """\
global
    nbthread 1
    maxconn {maxconn}
    no strict-limits

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend fe
    bind 127.0.0.1:{port}{bind_tls}
    default_backend stable

backend stable
    server s1 127.0.0.1:{upstream_port} maxconn 1000
"""

# The grpc scenario's nginx: HTTP/2 over TLS in front, grpc_pass to a keep-alive pool of h2c
# connections to the stable grpcio server (nginx carries one stream per upstream connection).
GRPC_NGINX_HTTP = """\
    upstream grpc_stable {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
        keepalive_requests 100000000;
        keepalive_timeout 120s;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096 ssl http2;
{tls_lines}        location / {{
            grpc_pass grpc://grpc_stable;
        }}
    }}
"""

# The grpc scenario's HAProxy: the same, its server spoken to in HTTP/2 (h2c).
HAPROXY_GRPC_CFG = HAPROXY_CFG.replace(" maxconn 1000\n", " maxconn 1000 proto h2\n")

ROLLOUT_YAML = """\
listen: 127.0.0.1:{port}
{tls_block}admin:
  listen: 127.0.0.1:{admin_port}
state: {{backend: file, path: {state_path}}}
trusted_peers: [127.0.0.1/32]
limits:
  max_connections: {max_connections}
  drain: 500ms
services:
  - name: bench
    identity:
      - {{header: X-Tenant-ID, kind: tenant}}
    unidentified: stable
    tiers:
      tenants:
{tier_lines}
      default: free
    upstreams:
      stable: [http://127.0.0.1:{stable_port}]
      canary: [http://127.0.0.1:{canary_port}]
{protocol}    rollout:
      strategy: canary
      salt: bench-2026
      steps:
        - {first_step}
        - {{percent: 100}}
      analysis:
        # The canary's requests through the proxy are slower than the stable ones against
        # the very same nginx here (tiny, 64 connections: 2.1 ms in the proxy on average
        # against 1.4 ms): the default 25% tolerance rolls the benchmark's own rollout back.
        latency: {{max_increase: 2.0}}
"""

WRK_LUA = """\
local reqs = {{}}
local n = {ids}
local i = 0

init = function(args)
   local body = {body}
   for k = 1, n do
      local h = {{["X-Tenant-ID"] = string.format("tenant-%04d", (k * 7919) % {tenants})}}
      {close_header}
      reqs[k] = wrk.format("{method}", "{path}", h, body)
   end
end

request = function()
   i = i + 1
   if i > n then i = 1 end
   return reqs[i]
end

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH_RESULT {{\\"requests\\":%.0f,\\"duration_us\\":%.0f,\\"bytes\\":%.0f," ..
      "\\"connect\\":%.0f,\\"read\\":%.0f,\\"write\\":%.0f,\\"status\\":%.0f,\\"timeout\\":%.0f," ..
      "\\"p50_us\\":%.1f,\\"p99_us\\":%.1f,\\"mean_us\\":%.1f}}\\n",
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.mean))
end
"""


# ---------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """A timed wrk scenario."""

    name: str
    title: str
    connections: int
    method: str = "GET"
    path: str = "/"
    body_bytes: int = 0
    response_bytes: int = 0
    close: bool = False
    ids: int = TENANTS  # request variants the Lua script cycles through
    tenants: int = TENANTS  # distinct tenant ids among them
    timeout_s: float = 2.0
    streams: int = 0  # > 0: HTTP/2 over TLS (ALPN h2), h2load with this many streams each
    grpc: bool = False  # gRPC unary calls (POST, length-prefixed message) to the grpcio servers


@dataclass(slots=True)
class RunResult:
    """One wrk run of one scenario against one target."""

    scenario: str
    target: str
    round: int
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mean_ms: float = 0.0
    mib_s: float | None = None
    cpu_us_per_req: float | None = None
    rss_mib: float | None = None
    peak_rss_mib: float | None = None
    bad_status: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    failure: str | None = None
    upstream_calls: int | None = None  # grpc: Unary calls the grpcio servers served in the run
    upstream_cpu_pct: float | None = None  # grpc: the grpcio servers' CPU over the run

    @property
    def errors(self) -> int:
        """Responses with a status >= 400 plus socket errors (connect, read, write, timeout)."""
        return self.bad_status + sum(self.socket_errors.values())

    @property
    def flagged(self) -> bool:
        return self.failure is not None or self.errors > 0


@dataclass(slots=True)
class IdleResult:
    """Idle keep-alive connections held open against one target."""

    target: str
    requested: int
    opened: int = 0
    alive_after_hold: int = 0
    sampled: int = 0
    rss_before_mib: float = 0.0
    rss_open_mib: float = 0.0
    rss_closed_mib: float = 0.0
    kib_per_conn: float | None = None
    limited_by: str | None = None
    failure: str | None = None


@dataclass(slots=True)
class SoakResult:
    """RSS of one target sampled while it serves `requested` tiny GETs (64 connections, many
    distinct ids), after a warm-up of a tenth of them."""

    target: str
    requested: int
    requests: int = 0
    duration_s: float = 0.0
    rps: float = 0.0
    warmup_requests: int = 0
    samples: list[tuple[int, float]] = field(default_factory=list)  # (requests so far, RSS MiB)
    rss_first_mib: float | None = None  # the first sample after the warm-up
    rss_last_mib: float | None = None
    rss_max_mib: float | None = None  # the most seen after the warm-up (sampled every 50 ms)
    growth: float | None = None  # last / first - 1
    flat: bool | None = None  # growth within FLAT_RSS
    errors: int = 0
    cpu_us_per_req: float | None = None
    failure: str | None = None


@dataclass(slots=True)
class RolloutCheck:
    """What rollout-proxy's admin API says about the rollout after the timed runs."""

    status: str = ""
    step: int | None = None
    canary_percent: float | None = None
    verdict: str | None = None
    summary: str = ""  # the verdict's own words
    canary_requests: int = 0  # counted by the analysis (its errors check) in this step
    baseline_requests: int = 0
    failure: str | None = None


@dataclass(slots=True)
class Summary:
    """Medians over the valid rounds of one scenario for one target."""

    scenario: str
    target: str
    valid_runs: int
    flagged_runs: int
    rps: float | None = None
    vs_nginx: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    p50_minus_nginx_us: float | None = None
    mib_s: float | None = None
    cpu_us_per_req: float | None = None
    peak_rss_mib: float | None = None
    errors: int = 0  # over every run, flagged ones included
    vs_direct: float | None = None  # grpc: RPS over the grpcio server's own (direct)
    upstream_calls: int | None = None  # grpc: summed over the valid runs
    upstream_cpu_pct: float | None = None  # grpc: median over the valid runs


@dataclass(slots=True)
class Options:
    """Resolved command-line options."""

    rounds: int
    duration: float
    warmup: float
    scenarios: tuple[str, ...]
    targets: tuple[str, ...]
    explicit_targets: bool
    connections: int
    body_connections: int
    idle_n: int
    soak_requests: int
    json_path: Path | None
    proxy_cmd: str
    quick: bool
    keep_workdir: bool
    shadow: float = 0.0  # > 0: the rollout is at a shadow step mirroring this percent
    tls: bool = False  # every proxy listens with TLS; wrk speaks https to it
    upstream_h2c: bool = False  # rollout-proxy speaks h2c to upstreams of their own


TIMED_SCENARIOS: dict[str, Callable[[Options], Scenario]] = {
    "tiny": lambda o: Scenario(
        "tiny", f"GET / tiny response, {o.connections} connections", o.connections
    ),
    "tiny1": lambda o: Scenario("tiny1", "GET / tiny response, 1 connection (unloaded)", 1),
    "body": lambda o: Scenario(
        "body",
        f"POST /body 1 MiB request + 1 MiB response, {o.body_connections} connections",
        o.body_connections,
        method="POST",
        path="/body",
        body_bytes=BODY_BYTES,
        response_bytes=BODY_BYTES,
        ids=8,
        timeout_s=10.0,
    ),
    "churn": lambda o: Scenario(
        "churn",
        f"GET / with Connection: close, {o.connections} connections",
        o.connections,
        close=True,
    ),
    "h2": lambda o: Scenario(
        "h2",
        "GET / over HTTP/2 (TLS, ALPN h2): h2load, 100 streams over 8 connections",
        8,
        streams=100,
        tenants=1,
    ),
    "grpc": lambda o: Scenario(
        "grpc",
        f"gRPC unary {GRPC_METHOD} ({len(GRPC_MESSAGE)}-byte echo) over HTTP/2 (TLS, ALPN h2; "
        "direct: h2c) to grpcio servers: h2load, 100 streams over 8 connections",
        8,
        method="POST",
        path=GRPC_METHOD,
        streams=100,
        tenants=1,
        grpc=True,
    ),
}


# ---------------------------------------------------------------------------------------------
# /proc readers
# ---------------------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    return text[text.rfind(")") + 2 :].split()  # fields from #3 (state) on


def process_tree(root: int) -> list[int]:
    """The root pid and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime (plus reaped children) of the processes, in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return ticks / CLK_TCK


def rss_mib(pids: Sequence[int]) -> float:
    """Sum of VmRSS of the processes, in MiB."""
    kib = 0
    for pid in pids:
        for line in (_read(f"/proc/{pid}/status") or "").splitlines():
            if line.startswith("VmRSS:"):
                kib += int(line.split()[1])
    return kib / 1024


def socket_inodes(pids: Sequence[int]) -> set[str]:
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    return inodes


def listener_inodes(port: int) -> set[str]:
    """Inodes of sockets listening on 127.0.0.1:port (or any address), IPv4 sockets or IPv6
    ones holding it as a v4-mapped address (as grpcio binds)."""
    found: set[str] = set()
    lines = (_read("/proc/net/tcp") or "").splitlines()[1:]
    lines += (_read("/proc/net/tcp6") or "").splitlines()[1:]
    for line in lines:
        parts = line.split()
        addr, port_hex = parts[1].split(":")
        if parts[3] == "0A" and int(port_hex, 16) == port and addr in LOOPBACK_HEX:
            found.add(parts[9])
    return found


# 127.0.0.1 and 0.0.0.0 as /proc/net/tcp spells them, then as v4-mapped IPv6 in /proc/net/tcp6.
LOOPBACK_HEX = ("0100007F", "00000000", "0000000000000000FFFF00000100007F", "0" * 32)


class RssSampler:
    """Samples the RSS of a process tree in a background thread; keeps the peak."""

    def __init__(self, root: int, interval_s: float = 0.05) -> None:
        self._interval = interval_s
        self._stop = threading.Event()
        self._pids = process_tree(root)
        self.peak = rss_mib(self._pids)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, rss_mib(self._pids))


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free a moment ago (bound to port 0, then released)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pinned(cpu: int | None, argv: Sequence[str]) -> list[str]:
    if cpu is None:
        return list(argv)
    return ["taskset", "-c", str(cpu), *argv]


class Managed:
    """A child process in its own process group, output to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.log_path = name, log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def owns_listener(self, port: int) -> bool:
        listening = listener_inodes(port)
        return bool(listening) and bool(listening & socket_inodes(self.tree()))

    def tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.strip().splitlines()[-lines:]) or "(no output)"

    def stop(self, grace_s: float = 5.0) -> None:
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers left in the group


class StartError(Exception):
    """A server did not come up."""


def wait_listening(proc: Managed, ports: Sequence[int], timeout_s: float = 20.0) -> None:
    """Wait until the process tree itself listens on every port (not someone else's socket)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.tail()}")
        if all(proc.owns_listener(p) for p in ports):
            return
        time.sleep(0.05)
    raise StartError(
        f"{proc.name} not listening on {list(ports)} after {timeout_s:.0f} s:\n{proc.tail()}"
    )


@dataclass(slots=True)
class Target:
    """Something wrk can be pointed at; proc is None for the bare upstream."""

    name: str
    port: int
    proc: Managed | None
    note: str = ""
    admin_port: int | None = None
    tls: bool = False  # https (the proxies under --tls), else plain http


class Bench:
    """Owns the working directory and every process started for a run."""

    def __init__(
        self,
        opts: Options,
        workdir: Path,
        cpus: tuple[int | None, int | None],
        nofile: int,
    ) -> None:
        self.opts, self.workdir = opts, workdir
        self.load_cpu, self.target_cpu = cpus
        self.procs: list[Managed] = []
        self.upstream_ports = (0, 0)
        self.h2c_ports = (0, 0)  # the same upstreams over h2c (--upstream-h2c)
        self.grpc_ports = (0, 0)  # the grpcio servers, stable and canary (grpc scenario)
        self.grpc_procs: list[Managed] = []
        self.grpc_request = workdir / "grpc-request.bin"  # h2load's -d: one framed message
        self.nofile = nofile  # inherited by every server started here
        self.max_conns = max(8192, opts.idle_n + 1024)  # downstream connections to accept
        self.cert: TlsFiles | None = make_certificate(workdir) if opts.tls else None

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def _start(
        self,
        name: str,
        build: Callable[[list[int]], tuple[list[str], Path | None, dict[str, str] | None]],
        nports: int,
        listen: int,
    ) -> tuple[Managed, list[int]]:
        """Start a server on fresh ports; retry when a port was taken in between."""
        last = ""
        for _attempt in range(3):
            ports = free_ports(nports)
            argv, cwd, env = build(ports)
            proc = Managed(name, argv, self.workdir / f"{name}.log", cwd=cwd, env=env)
            self.procs.append(proc)
            try:
                wait_listening(proc, ports[:listen])
                return proc, ports
            except StartError as exc:
                last = str(exc)
                proc.stop()
                self.procs.remove(proc)
        raise StartError(last)

    def _nginx_prefix(self, name: str, http_body: str) -> Path:
        prefix = self.workdir / name
        (prefix / "tmp").mkdir(parents=True)
        (prefix / "data").mkdir()
        prefix.chmod(0o755)  # nginx workers drop privileges when started as root
        head = NGINX_COMMON.format(nofile=self.nofile, worker_connections=self.max_conns + 1024)
        text = f"{head}\nhttp {{\n{NGINX_HTTP_COMMON}\n{http_body}}}\n"
        (prefix / "nginx.conf").write_text(text)
        return prefix

    def start_upstream(self) -> Target:
        h2c = self.opts.upstream_h2c
        pools = ("stable", "canary", "stable", "canary") if h2c else ("stable", "canary")

        def build(ports: list[int]) -> tuple[list[str], Path | None, dict[str, str] | None]:
            servers = "".join(
                UPSTREAM_SERVER.format(port=p, pool=pool, http2=" http2" if i >= 2 else "")
                for i, (p, pool) in enumerate(zip(ports, pools, strict=True))
            )
            prefix = self._nginx_prefix(
                f"upstream-{ports[0]}", f"    default_type text/plain;\n\n{servers}"
            )
            (prefix / "data" / "body").write_bytes(b"x" * BODY_BYTES)
            return pinned(self.load_cpu, nginx_argv(prefix)), None, None

        _, ports = self._start("upstream", build, len(pools), len(pools))
        self.upstream_ports = (ports[0], ports[1])
        if h2c:
            self.h2c_ports = (ports[2], ports[3])
        return Target("direct", ports[0], None, "wrk straight at the upstream")

    def start_grpc_upstreams(self) -> Target:
        """Two grpcio servers (stable and canary) pinned to the load CPU, like the nginx
        upstream; the `direct` target is the stable one over h2c."""
        ports: list[int] = []
        for pool in ("stable", "canary"):

            def build(
                got: list[int], pool: str = pool
            ) -> tuple[list[str], Path | None, dict[str, str] | None]:
                argv = [sys.executable, str(GRPC_SCRIPT), "--listen", f"127.0.0.1:{got[0]}"]
                argv += ["--pool", pool, "--threads", str(GRPC_THREADS)]
                return pinned(self.load_cpu, argv), None, None

            proc, got = self._start(f"grpc-{pool}", build, 1, 1)
            self.grpc_procs.append(proc)
            ports.append(got[0])
        self.grpc_ports = (ports[0], ports[1])
        self.grpc_request.write_bytes(grpc_frame(GRPC_MESSAGE))
        note = f"h2load straight at the stable grpcio server (h2c, {GRPC_THREADS} threads)"
        return Target("direct", ports[0], None, note)

    def start_nginx(self, grpc: bool = False) -> Target:
        cert = self.cert
        ssl, tls_lines = "", ""
        if cert is not None:
            ssl = " ssl http2" if "h2" in self.opts.scenarios else " ssl"
            tls_lines = NGINX_TLS.format(cert=cert.cert, key=cert.key)

        def build(ports: list[int]) -> tuple[list[str], Path | None, dict[str, str] | None]:
            if grpc:
                body = GRPC_NGINX_HTTP.format(
                    upstream_port=self.grpc_ports[0], port=ports[0], tls_lines=tls_lines
                )
            else:
                body = PROXY_NGINX_HTTP.format(
                    upstream_port=self.upstream_ports[0],
                    port=ports[0],
                    ssl=ssl,
                    tls_lines=tls_lines,
                )
            prefix = self._nginx_prefix(f"nginx-proxy-{ports[0]}", body)
            return pinned(self.target_cpu, nginx_argv(prefix)), None, None

        proc, ports = self._start("nginx-grpc" if grpc else "nginx", build, 1, 1)
        note = "1 worker, keep-alive upstream" + (", TLS" if cert else "")
        if grpc:
            note = "1 worker, grpc_pass to a keep-alive h2c pool, TLS"
        return Target("nginx", ports[0], proc, note, tls=cert is not None)

    def start_haproxy(self, grpc: bool = False) -> Target:
        http2 = grpc or "h2" in self.opts.scenarios

        def build(ports: list[int]) -> tuple[list[str], Path | None, dict[str, str] | None]:
            cfg = self.workdir / f"haproxy-{ports[0]}.cfg"
            cfg.write_text(
                (HAPROXY_GRPC_CFG if grpc else HAPROXY_CFG).format(
                    maxconn=self.max_conns,
                    port=ports[0],
                    upstream_port=(self.grpc_ports if grpc else self.upstream_ports)[0],
                    bind_tls=haproxy_bind_tls(self.cert, http2),
                )
            )
            return pinned(self.target_cpu, ["haproxy", "-db", "-f", str(cfg)]), None, None

        proc, ports = self._start("haproxy-grpc" if grpc else "haproxy", build, 1, 1)
        note = "1 thread, http-reuse always" + (", TLS" if self.cert else "")
        if self.cert is not None and http2:
            note += ", ALPN h2,http/1.1"
        if grpc:
            note += ", proto h2 (h2c) to the grpcio server"
        return Target("haproxy", ports[0], proc, note, tls=self.cert is not None)

    def start_rollout_proxy(self, grpc: bool = False) -> Target:
        upstream = self.h2c_ports if self.opts.upstream_h2c else self.upstream_ports
        state = self.workdir / ("state-grpc" if grpc else "state")

        def build(ports: list[int]) -> tuple[list[str], Path | None, dict[str, str] | None]:
            cfg = self.workdir / f"rollout-{ports[0]}.yaml"
            state.mkdir(exist_ok=True)
            cfg.write_text(
                rollout_config(
                    ports[0],
                    ports[1],
                    self.grpc_ports if grpc else upstream,
                    state / "rollouts.json",
                    self.max_conns,
                    0.0 if grpc else self.opts.shadow,
                    self.cert,
                    h2c=grpc or self.opts.upstream_h2c,
                    http2=grpc or "h2" in self.opts.scenarios,
                )
            )
            argv = [
                a.format(python=sys.executable, config=cfg)
                for a in shlex.split(self.opts.proxy_cmd)
            ]
            if self.opts.shadow and "--workers" not in argv:
                argv += ["--workers", "1"]  # shadow steps run in the single-process data plane
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
            )
            return pinned(self.target_cpu, argv), REPO_ROOT, env

        proc, ports = self._start("rollout-proxy-grpc" if grpc else "rollout-proxy", build, 2, 1)
        note = "as shipped: metrics and analysis on, rollout at a 10% canary step"
        if grpc:
            note += ", TLS, h2c to the grpcio servers (upstreams: {protocol: h2c})"
            return Target("rollout-proxy", ports[0], proc, note, admin_port=ports[1], tls=True)
        if self.opts.shadow:
            note = (
                f"metrics and analysis on, rollout at a shadow step mirroring "
                f"{self.opts.shadow:g}% to the canary (--workers 1)"
            )
        if self.cert is not None:
            note += ", TLS"
        if self.opts.upstream_h2c:
            note += ", h2c to the upstream"
        return Target(
            "rollout-proxy", ports[0], proc, note, admin_port=ports[1], tls=self.cert is not None
        )

    def start_bare(self) -> Target:
        def build(ports: list[int]) -> tuple[list[str], Path | None, dict[str, str] | None]:
            argv = [
                sys.executable,
                str(BARE_SCRIPT),
                "--listen",
                f"127.0.0.1:{ports[0]}",
                "--upstream",
                f"127.0.0.1:{self.upstream_ports[0]}",
            ]
            return pinned(self.target_cpu, argv), None, None

        proc, ports = self._start("bare", build, 1, 1)
        note = "asyncio.Protocol + httptools both ways, keep-alive pool (reference only)"
        return Target("bare", ports[0], proc, note)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path
    both: Path  # certificate then key, as HAProxy's `crt` takes them


def make_certificate(workdir: Path) -> TlsFiles:
    """A self-signed EC P-256 certificate for 127.0.0.1, made for this run."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files = TlsFiles(workdir / "bench.pem", workdir / "bench.key", workdir / "bench-both.pem")
    files.cert.write_bytes(cert_pem)
    files.key.write_bytes(key_pem)
    files.both.write_bytes(cert_pem + key_pem)
    return files


def haproxy_bind_tls(cert: TlsFiles | None, http2: bool) -> str:
    """HAProxy's `bind` options under --tls; with `http2` it offers h2 then http/1.1 by ALPN
    (as nginx's `listen ... ssl http2` does), its upstream staying HTTP/1.1 keep-alive."""
    if cert is None:
        return ""
    return f" ssl crt {cert.both} ssl-min-ver TLSv1.2" + (" alpn h2,http/1.1" if http2 else "")


def grpc_frame(message: bytes) -> bytes:
    """One gRPC message on the wire: uncompressed flag, 4-byte big-endian length, the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def nginx_argv(prefix: Path) -> list[str]:
    return ["nginx", "-p", f"{prefix}/", "-c", "nginx.conf", "-e", "stderr"]


def rollout_config(
    port: int,
    admin_port: int,
    upstream: tuple[int, int],
    state: Path,
    max_connections: int,
    shadow: float = 0.0,
    cert: TlsFiles | None = None,
    *,
    h2c: bool = False,
    http2: bool = False,
    h2c_listener: bool = False,
) -> str:
    """`shadow` > 0: the first step is a shadow step mirroring that percent of the requests
    to the canary (exposing nobody) instead of a 10% canary step. `h2c`: HTTP/2 (prior
    knowledge) to the upstreams; `http2`: the listener serves HTTP/2 too, and with
    `h2c_listener` by prior knowledge on a plain listener (loadtests/h2flood.py)."""
    tiers = {f"tenant-{i:04d}": "enterprise" for i in range(1, 11)}
    tiers.update({f"tenant-{i:04d}": "internal" for i in range(11, 21)})
    tier_lines = "\n".join(f"        {k}: {v}" for k, v in tiers.items())
    tls_block = f"tls: {{cert: {cert.cert}, key: {cert.key}}}\n" if cert else ""
    if http2:
        tls_block += f"http2: {{enabled: true{', h2c: true' if h2c_listener else ''}}}\n"
    return ROLLOUT_YAML.format(
        tls_block=tls_block,
        port=port,
        admin_port=admin_port,
        state_path=state,
        max_connections=max_connections,
        tier_lines=tier_lines,
        stable_port=upstream[0],
        canary_port=upstream[1],
        protocol="      protocol: h2c\n" if h2c else "",
        first_step=f"{{shadow: {shadow:g}, observe: 24h}}"
        if shadow
        else "{percent: 10, observe: 24h}",
    )


# ---------------------------------------------------------------------------------------------
# Pre-flight checks (plain http.client, before anything is timed)
# ---------------------------------------------------------------------------------------------


def _get(
    conn: http.client.HTTPConnection,
    tenant: str,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
) -> tuple[int, str | None, bool, int]:
    conn.request(method, path, body=body, headers={"X-Tenant-ID": tenant})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, resp.getheader("X-Pool"), resp.will_close, len(data)


def _connection(port: int, timeout: float, tls: bool) -> http.client.HTTPConnection:
    """A pre-flight connection; over TLS it trusts the run's own self-signed certificate."""
    if not tls:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)


def check_keepalive(port: int, tls: bool = False) -> str | None:
    conn = _connection(port, 5, tls)
    try:
        status, _, closes, _ = _get(conn, "tenant-0001")
        first = conn.sock
        status2, _, closes2, _ = _get(conn, "tenant-0002")
        if (status, status2) != (200, 200):
            return f"expected 200, got {status} and {status2}"
        if closes or closes2 or conn.sock is not first:
            return "connection not kept alive"
        return None
    finally:
        conn.close()


def check_sticky(port: int, ids: int = 200, tls: bool = False) -> tuple[str | None, float]:
    """Every id twice, on two different connections: same X-Pool both times."""
    passes: list[list[str | None]] = []
    for _ in range(2):
        conn = _connection(port, 5, tls)
        try:
            passes.append([_get(conn, f"sticky-{i}")[1] for i in range(ids)])
        finally:
            conn.close()
    if None in passes[0] or None in passes[1]:
        return "responses without X-Pool header", 0.0
    moved = sum(a != b for a, b in zip(passes[0], passes[1], strict=True))
    canary = passes[0].count("canary") / ids
    return (f"{moved} of {ids} ids changed side" if moved else None), canary


def check_body(port: int, tls: bool = False) -> str | None:
    conn = _connection(port, 10, tls)
    try:
        status, _, _, size = _get(conn, "tenant-0001", "POST", "/body", b"x" * BODY_BYTES)
        if status != 200 or size != BODY_BYTES:
            return f"POST /body: status {status}, {size} bytes (expected 200, {BODY_BYTES})"
        return None
    finally:
        conn.close()


def preflight(target: Target, with_body: bool) -> tuple[str | None, str]:
    """Returns (error, note)."""
    try:
        error = check_keepalive(target.port, target.tls)
        if error:
            return error, ""
        error, canary = check_sticky(target.port, tls=target.tls)
        if error:
            return error, ""
        if with_body and (error := check_body(target.port, target.tls)):
            return error, ""
        return None, f"canary share {canary:.1%} of 200 ids"
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}", ""


# ---------------------------------------------------------------------------------------------
# gRPC pre-flight and counters (a real grpcio client, before and around the timed runs)
# ---------------------------------------------------------------------------------------------


def grpc_channel(port: int, cert: TlsFiles | None) -> Any:
    """A grpcio channel to 127.0.0.1:port: TLS trusting the run's certificate, else h2c."""
    import grpc

    address = f"127.0.0.1:{port}"
    if cert is None:
        return grpc.insecure_channel(address)
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.cert.read_bytes())
    return grpc.secure_channel(address, credentials)


def grpc_served(ports: Sequence[int]) -> int:
    """Unary calls the grpcio servers on `ports` have served (their Stats method)."""
    import grpc

    total = 0
    for port in ports:
        with grpc_channel(port, None) as channel:
            try:
                total += int(channel.unary_unary("/bench.Echo/Stats")(b"", timeout=5))
            except grpc.RpcError as exc:
                raise RuntimeError(f"grpcio server on port {port}: {exc.code().name}") from exc
    return total


def grpc_preflight(
    target: Target, cert: TlsFiles | None, calls: int = GRPC_PREFLIGHT_CALLS
) -> tuple[str | None, str]:
    """`calls` unary echo calls through the target, each of which must end with grpc-status 0
    (OK) and its own bytes back; then `calls` tenant ids, asked twice on two channels, must land
    on the same grpcio server (Pool). Returns (error, note) as preflight does."""
    import grpc

    failed: list[str] = []
    pools: list[list[bytes]] = []
    try:
        for attempt in range(2):
            with grpc_channel(target.port, cert if target.tls else None) as channel:
                unary = channel.unary_unary(GRPC_METHOD)
                pool = channel.unary_unary("/bench.Echo/Pool")
                if attempt == 0:
                    for i in range(calls):
                        try:
                            meta = (("x-tenant-id", f"tenant-{i % TENANTS:04d}"),)
                            if unary(GRPC_MESSAGE, timeout=5, metadata=meta) != GRPC_MESSAGE:
                                failed.append("a wrong echo")
                        except grpc.RpcError as exc:
                            failed.append(f"{exc.code().name}: {exc.details()}")
                ids = [(("x-tenant-id", f"sticky-{i}"),) for i in range(calls)]
                pools.append([pool(b"", timeout=5, metadata=m) for m in ids])
    except grpc.RpcError as exc:
        return f"gRPC pre-flight: {exc.code().name}: {exc.details()}", ""
    if failed:
        return f"{len(failed)} of {calls} gRPC calls failed, e.g. {failed[0]}", ""
    moved = sum(a != b for a, b in zip(pools[0], pools[1], strict=True))
    if moved:
        return f"{moved} of {calls} ids changed grpcio server", ""
    canary = pools[0].count(b"canary") / calls
    return None, f"grpc-status 0 on {calls}/{calls} calls; canary share {canary:.1%} of {calls} ids"


# ---------------------------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------------------------


def write_lua(workdir: Path, sc: Scenario) -> Path:
    script = WRK_LUA.format(
        ids=sc.ids,
        tenants=sc.tenants,
        body=f'string.rep("x", {sc.body_bytes})' if sc.body_bytes else "nil",
        close_header='h["Connection"] = "close"' if sc.close else "",
        method=sc.method,
        path=sc.path,
    )
    path = workdir / f"wrk-{sc.name}.lua"
    path.write_text(script)
    return path


def run_wrk(
    bench: Bench, sc: Scenario, port: int, duration: float, *, tls: bool = False
) -> dict[str, float]:
    argv = pinned(
        bench.load_cpu,
        [
            "wrk",
            "-t1",
            f"-c{sc.connections}",
            f"-d{max(1, round(duration))}s",
            "--latency",
            f"--timeout={sc.timeout_s:g}s",
            "-s",
            str(write_lua(bench.workdir, sc)),
            f"{'https' if tls else 'http'}://127.0.0.1:{port}{sc.path}",
        ],
    )
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=duration + 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for line in out.splitlines():
        if line.startswith("BENCH_RESULT "):
            parsed: dict[str, float] = json.loads(line.split(" ", 1)[1])
            return parsed
    raise RuntimeError(f"wrk exited {proc.returncode} without a result:\n{out.strip()[-800:]}")


def h2load_argv(
    sc: Scenario, port: int, duration: float, log: Path, *, tls: bool, grpc_request: Path
) -> list[str]:
    """h2load's command line (unpinned): `sc.connections` connections of `sc.streams`
    concurrent streams each for `duration` s, over TLS with ALPN h2 (`tls`) or h2c by prior
    knowledge. gRPC: POST of the framed message in `grpc_request`, with gRPC's headers."""
    argv = ["h2load", "-t1", f"-c{sc.connections}", f"-m{sc.streams}"]
    argv += [f"-D{max(1, round(duration))}", "-H", "X-Tenant-ID: tenant-0001"]
    if sc.grpc:
        argv += ["-d", str(grpc_request), "-H", "content-type: application/grpc"]
        argv += ["-H", "te: trailers"]
    scheme = "https" if tls else "http"
    return [*argv, f"--log-file={log}", f"{scheme}://127.0.0.1:{port}{sc.path}"]


def run_h2load(
    bench: Bench, sc: Scenario, port: int, duration: float, *, tls: bool = True
) -> dict[str, float]:
    """h2load (nghttp2-client), as h2load_argv says, pinned to the load CPU; the figures wrk's
    script reports (p50/p99 from h2load's per-request log)."""
    log = bench.workdir / f"h2load-{port}.log"
    log.unlink(missing_ok=True)
    argv = pinned(
        bench.load_cpu,
        h2load_argv(sc, port, duration, log, tls=tls, grpc_request=bench.grpc_request),
    )
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration + 30, stdin=subprocess.DEVNULL
    )
    out = proc.stdout + proc.stderr
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored, (\d+) timeout", out)  # fmt: skip
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if done is None or codes is None or "h2" not in out.split("Application protocol:")[-1][:8]:
        raise RuntimeError(f"h2load exited {proc.returncode} without h2 results:\n{out[-800:]}")
    latencies = sorted(
        int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2
    )
    if not latencies:
        raise RuntimeError("h2load logged no request")
    first_last = [int(line.split("\t")[0]) for line in log.read_text().splitlines() if line]
    return {
        "requests": float(len(latencies)),
        "duration_us": float(max(first_last) - min(first_last)) or duration * 1e6,
        "p50_us": float(latencies[len(latencies) // 2]),
        "p99_us": float(latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)]),
        "mean_us": sum(latencies) / len(latencies),
        "status": float(int(codes[3]) + int(codes[4])),
        "connect": 0.0,
        "read": float(int(done[5])),
        "write": 0.0,
        "timeout": float(int(done[6])),
    }


def measure(bench: Bench, sc: Scenario, target: Target, rnd: int, duration: float) -> RunResult:
    result = RunResult(sc.name, target.name, rnd)
    pids = target.proc.tree() if target.proc else []
    cpu0 = cpu_seconds(pids)
    sampler = RssSampler(target.proc.pid) if target.proc and sc.body_bytes else None
    upstream_pids = [p for proc in bench.grpc_procs for p in proc.tree()] if sc.grpc else []
    try:
        calls0 = grpc_served(bench.grpc_ports) if sc.grpc else 0
        upstream_cpu0, started = cpu_seconds(upstream_pids), time.monotonic()
        with sampler or contextlib.nullcontext():
            if sc.streams:
                raw = run_h2load(bench, sc, target.port, duration, tls=target.tls)
            else:
                raw = run_wrk(bench, sc, target.port, duration, tls=target.tls)
        if sc.grpc:
            result.upstream_calls = grpc_served(bench.grpc_ports) - calls0
            elapsed = time.monotonic() - started
            result.upstream_cpu_pct = 100 * (cpu_seconds(upstream_pids) - upstream_cpu0) / elapsed
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result.failure = str(exc)
        return result
    fill_result(result, sc, raw)
    if sc.grpc and result.upstream_calls is not None:
        answered = result.requests - result.bad_status
        if result.upstream_calls < answered:  # 2xx the grpcio servers never served
            result.failure = (
                f"h2load counted {answered:,} 2xx answers but the grpcio servers' handlers "
                f"served only {result.upstream_calls:,} calls: the rest were gRPC errors behind "
                "an HTTP 200 (from the proxy, or gRPC core refusing calls)"
            )
    if target.proc:
        if not target.proc.alive():
            result.failure = f"{target.name} died:\n{target.proc.tail()}"
        if result.requests:
            result.cpu_us_per_req = (cpu_seconds(pids) - cpu0) * 1e6 / result.requests
        result.rss_mib = rss_mib(target.proc.tree())
        result.peak_rss_mib = sampler.peak if sampler else None
    return result


def fill_result(result: RunResult, sc: Scenario, raw: dict[str, float]) -> None:
    result.requests = int(raw["requests"])
    result.duration_s = raw["duration_us"] / 1e6
    result.rps = result.requests / result.duration_s if result.duration_s else 0.0
    result.p50_ms, result.p99_ms = raw["p50_us"] / 1e3, raw["p99_us"] / 1e3
    result.mean_ms = raw["mean_us"] / 1e3
    result.bad_status = int(raw["status"])
    result.socket_errors = {
        k: int(raw[k]) for k in ("connect", "read", "write", "timeout") if raw[k]
    }
    if sc.body_bytes or sc.response_bytes:
        result.mib_s = result.rps * (sc.body_bytes + sc.response_bytes) / MIB
    if result.requests == 0:
        result.failure = "no request completed"


# ---------------------------------------------------------------------------------------------
# Idle connections
# ---------------------------------------------------------------------------------------------


def raise_nofile(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (inherited by every child) as far as allowed; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
        return wanted
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _open_one(
    port: int, ident: int, sem: asyncio.Semaphore
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with sem:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
        await _exchange(reader, writer, ident)
        return reader, writer


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ident: int) -> None:
    writer.write(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tenant-ID: tenant-{ident % TENANTS:04d}"
        "\r\n\r\n".encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status = head.split(b" ", 2)[1]
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await asyncio.wait_for(reader.readexactly(length), 10)
    if status != b"200" or b"connection: close" in head.lower():
        raise ConnectionError(f"status {status!r} / connection close")


async def _idle_session(target: Target, result: IdleResult, hold_s: float) -> None:
    assert target.proc is not None
    sem = asyncio.Semaphore(256)
    opened = await asyncio.gather(
        *(_open_one(target.port, i, sem) for i in range(result.requested)), return_exceptions=True
    )
    conns = [c for c in opened if not isinstance(c, BaseException)]
    errors = [c for c in opened if isinstance(c, BaseException)]
    result.opened = len(conns)
    if errors:
        result.failure = f"{len(errors)} connections failed, e.g. {errors[0]!r}"
    await asyncio.sleep(hold_s)
    result.rss_open_mib = rss_mib(target.proc.tree())
    sample = conns[:: max(1, len(conns) // 100)]
    alive = await asyncio.gather(*(_exchange(r, w, 1) for r, w in sample), return_exceptions=True)
    result.sampled = len(sample)
    result.alive_after_hold = sum(not isinstance(a, BaseException) for a in alive)
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(0)


def measure_idle(target: Target, n: int, nofile: int, hold_s: float) -> IdleResult:
    """Open n idle keep-alive connections (one request each), hold them, report RSS per conn."""
    assert target.proc is not None
    usable = max(0, nofile - 512)
    result = IdleResult(target.name, min(n, usable))
    if usable < n:
        result.limited_by = f"RLIMIT_NOFILE {nofile}: {result.requested} of {n} connections"
    time.sleep(0.5)
    result.rss_before_mib = rss_mib(target.proc.tree())
    asyncio.run(_idle_session(target, result, hold_s))
    time.sleep(1.0)
    result.rss_closed_mib = rss_mib(target.proc.tree())
    if result.opened:
        delta_mib = result.rss_open_mib - result.rss_before_mib
        result.kib_per_conn = delta_mib * 1024 / result.opened
    if result.sampled and result.alive_after_hold < result.sampled and result.failure is None:
        result.failure = (
            f"{result.sampled - result.alive_after_hold} of {result.sampled} "
            "idle connections were dropped"
        )
    return result


# ---------------------------------------------------------------------------------------------
# Soak: RSS over millions of requests
# ---------------------------------------------------------------------------------------------


def soak_scenario(opts: Options) -> Scenario:
    return Scenario(
        "soak",
        f"GET / tiny response, {opts.connections} connections, {SOAK_IDS:,} distinct ids",
        opts.connections,
        ids=SOAK_IDS,
        tenants=SOAK_IDS,
    )


def measure_soak(bench: Bench, target: Target, total: int, segment_s: float) -> SoakResult:
    """Serve `total` requests in wrk runs of `segment_s`, sampling RSS after each run; the
    first tenth is the warm-up (caches and the analysis's windows filling up)."""
    assert target.proc is not None
    result = SoakResult(target.name, total, warmup_requests=total // 10)
    sc = soak_scenario(bench.opts)
    pids = target.proc.tree()
    cpu0 = cpu_seconds(pids)
    sampler: RssSampler | None = None
    try:
        while result.requests < total and result.failure is None:
            raw = run_wrk(bench, sc, target.port, segment_s, tls=target.tls)
            run = RunResult("soak", target.name, 0)
            fill_result(run, sc, raw)
            result.requests += run.requests
            result.duration_s += run.duration_s
            result.errors += run.errors
            result.failure = run.failure or (None if target.proc.alive() else "it died")
            rss = rss_mib(target.proc.tree())
            result.samples.append((result.requests, rss))
            if sampler is None and result.requests >= result.warmup_requests:
                result.rss_first_mib = rss
                sampler = RssSampler(target.proc.pid)
                sampler.start()
            print(
                f"  soak {target.name:<14} {result.requests:>10,} requests  RSS {rss:7.1f} MiB"
                f"  {run.rps:>8,.0f} rps",
                flush=True,
            )
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        result.failure = str(exc)
    finally:
        if sampler is not None:
            sampler.stop()
    if result.requests:
        result.cpu_us_per_req = (cpu_seconds(pids) - cpu0) * 1e6 / result.requests
        result.rps = result.requests / result.duration_s if result.duration_s else 0.0
    after = [rss for done, rss in result.samples if done >= result.warmup_requests]
    if after and result.rss_first_mib:
        result.rss_last_mib = after[-1]
        result.rss_max_mib = max(max(after), sampler.peak if sampler else 0.0)
        result.growth = result.rss_last_mib / result.rss_first_mib - 1.0
        result.flat = result.growth <= FLAT_RSS
    if result.errors and result.failure is None:
        result.failure = f"{result.errors} errors"
    return result


# ---------------------------------------------------------------------------------------------
# The rollout, as rollout-proxy's admin API reports it
# ---------------------------------------------------------------------------------------------


def check_rollout(target: Target, expect_traffic: bool, shadow: bool = False) -> RolloutCheck:
    """The rollout must still be progressing at its first (10%) step, and its analysis must
    have counted requests on both arms (the step's baseline is the stable arm). At a shadow
    step: compared answers (canary: the mirrored copies, baseline: stable's answers)."""
    check = RolloutCheck()
    if target.admin_port is None:
        check.failure = "no admin port"
        return check
    try:
        status = _admin_status(target.admin_port)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        check.failure = f"admin API: {type(exc).__name__}: {exc}"
        return check
    check.status = str(status.get("status"))
    check.step = status.get("step")
    check.canary_percent = status.get("canary_percent")
    verdict = status.get("verdict") or {}
    check.verdict = verdict.get("verdict")
    check.summary = str(verdict.get("summary", ""))
    for evidence in verdict.get("checks", []):
        if evidence.get("check") == "errors":
            check.canary_requests = int(evidence["canary"]["requests"])
            check.baseline_requests = int(evidence["baseline"]["requests"])
        elif shadow and str(evidence.get("check", "")).startswith("shadow:"):
            check.canary_requests += int(evidence["canary"]["requests"])
            check.baseline_requests += int(evidence["canary"]["requests"])
    if check.status != "progressing" or check.step != 0:
        check.failure = f"rollout {check.status} at step {check.step}, expected progressing at 0"
    elif expect_traffic and not (check.canary_requests and check.baseline_requests):
        check.failure = "the analysis counted no traffic on one arm"
    return check


def _admin_status(port: int, attempts: int = 20) -> dict[str, Any]:
    """GET the bench service's rollout status (the verdict is taken every second: wait for
    one when the proxy has just started)."""
    status: dict[str, Any] = {}
    for _ in range(attempts):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/api/v1/services/bench")
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise ValueError(f"status {resp.status}: {body[:200]!r}")
        status = json.loads(body)
        if status.get("verdict"):
            return status
        time.sleep(0.25)
    return status


# ---------------------------------------------------------------------------------------------
# Summary and report
# ---------------------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: Sequence[RunResult], scenario: str, target: str) -> Summary:
    mine = [r for r in runs if r.scenario == scenario and r.target == target]
    valid = [r for r in mine if not r.flagged]
    peaks = [r.peak_rss_mib for r in valid if r.peak_rss_mib is not None]
    calls = [r.upstream_calls for r in valid if r.upstream_calls is not None]
    return Summary(
        scenario,
        target,
        len(valid),
        len(mine) - len(valid),
        rps=_median([r.rps for r in valid]),
        p50_ms=_median([r.p50_ms for r in valid]),
        p99_ms=_median([r.p99_ms for r in valid]),
        mib_s=_median([r.mib_s for r in valid]),
        cpu_us_per_req=_median([r.cpu_us_per_req for r in valid]),
        peak_rss_mib=max(peaks) if peaks else None,
        errors=sum(r.errors for r in mine),
        upstream_calls=sum(r.upstream_calls or 0 for r in valid) if calls else None,
        upstream_cpu_pct=_median([r.upstream_cpu_pct for r in valid]),
    )


def relate_to_nginx(summaries: dict[str, Summary]) -> None:
    ref = summaries.get("nginx")
    if ref is None:
        return
    for s in summaries.values():
        if s.mib_s is not None and ref.mib_s:
            s.vs_nginx = s.mib_s / ref.mib_s
        elif s.rps is not None and ref.rps:
            s.vs_nginx = s.rps / ref.rps
        if s.p50_ms is not None and ref.p50_ms is not None:
            s.p50_minus_nginx_us = (s.p50_ms - ref.p50_ms) * 1e3


def relate_to_direct(summaries: dict[str, Summary]) -> None:
    """grpc: each target's RPS over direct's, the grpcio server's own ceiling."""
    ref = summaries.get("direct")
    if ref is None or not ref.rps:
        return
    for s in summaries.values():
        if s.rps is not None:
            s.vs_direct = s.rps / ref.rps


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":") for i, w in enumerate(widths))
    return "\n".join([line(header), sep + "|", *(line(r) for r in rows)])


def scenario_rows(summaries: Sequence[Summary], sc: Scenario) -> str:
    body = sc.body_bytes > 0
    head = ["target", "MiB/s" if body else "RPS", "vs nginx", "p50 ms", "p99 ms"]
    head += ["peak RSS MiB"] if body else ["p50-nginx us"] if sc.connections == 1 else []
    head += ["CPU us/req", "errors", "runs ok/flagged"]
    if sc.grpc:
        head[3:3] = ["vs direct"]
        head += ["upstream calls", "upstream CPU %"]
    rows = []
    for s in summaries:
        row = [
            s.target,
            _fmt(s.mib_s, ",.0f") if body else _fmt(s.rps, ",.0f"),
            _fmt(s.vs_nginx, ".2f"),
            _fmt(s.p50_ms, ".3f"),
            _fmt(s.p99_ms, ".3f"),
        ]
        if body:
            row.append(_fmt(s.peak_rss_mib, ".1f"))
        elif sc.connections == 1:
            row.append(_fmt(s.p50_minus_nginx_us, "+.0f"))
        row += [_fmt(s.cpu_us_per_req, ".1f"), str(s.errors), f"{s.valid_runs}/{s.flagged_runs}"]
        if sc.grpc:
            row[3:3] = [_fmt(s.vs_direct, ".2f")]
            row += [_fmt(s.upstream_calls, ","), _fmt(s.upstream_cpu_pct, ".0f")]
        rows.append(row)
    return table(head, rows)


def idle_rows(results: Sequence[IdleResult]) -> str:
    head = [
        "target",
        "connections",
        "RSS before MiB",
        "RSS open MiB",
        "KiB/conn",
        "RSS after close MiB",
        "alive (sample)",
        "note",
    ]
    rows = [
        [
            r.target,
            f"{r.opened}/{r.requested}",
            f"{r.rss_before_mib:.1f}",
            f"{r.rss_open_mib:.1f}",
            _fmt(r.kib_per_conn, ".2f"),
            f"{r.rss_closed_mib:.1f}",
            f"{r.alive_after_hold}/{r.sampled}",
            r.failure or r.limited_by or "",
        ]
        for r in results
    ]
    return table(head, rows)


def flagged_lines(runs: Sequence[RunResult]) -> list[str]:
    out = []
    for r in runs:
        if r.flagged:
            why = r.failure or f"status>=400: {r.bad_status}, socket errors: {r.socket_errors}"
            out.append(f"  FLAGGED {r.scenario}/{r.target} round {r.round}: {why}")
    return out


def machine_info() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in (_read("/proc/cpuinfo") or "").splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    nginx_v = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": nginx_v.split("/")[-1],
        "wrk": wrk_v[0].split()[1] if wrk_v else "?",
        "proxy_build": proxy_build(),
    }


def proxy_build() -> str:
    """Which build of rollout-proxy the default command runs: compiled (mypyc) or not."""
    probe = subprocess.run(
        [sys.executable, "-c", "from proxy.build import describe; print(describe())"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    return probe.stdout.strip() or "unknown"


# ---------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------


def available_targets(proxy_cmd_overridden: bool) -> dict[str, str | None]:
    """Target -> None when it can run, else why not."""
    return {
        "direct": None,
        "nginx": None,
        "haproxy": None if shutil.which("haproxy") else "haproxy not installed",
        "rollout-proxy": None
        if proxy_cmd_overridden or (REPO_ROOT / "proxy" / "cli.py").is_file()
        else "proxy/cli.py not found (the proxy is not built yet)",
        "bare": missing_modules(BARE_MODULES),
    }


def missing_modules(names: Sequence[str]) -> str | None:
    """None when every module imports in this interpreter (the one that runs bare.py)."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return f"{', '.join(missing)} not importable" if missing else None


def choose_cpus() -> tuple[int | None, int | None, str | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if not shutil.which("taskset"):
        return None, None, "taskset not found: processes are not pinned"
    if len(cpus) < 2:
        return cpus[0], cpus[0], f"only CPU {cpus[0]} available: everything shares it"
    return cpus[0], cpus[1], None


def start_targets(
    bench: Bench, names: Sequence[str], upstream: Target
) -> tuple[list[Target], dict[str, str]]:
    starters: dict[str, Callable[[], Target]] = {
        "direct": lambda: upstream,
        "nginx": bench.start_nginx,
        "haproxy": bench.start_haproxy,
        "rollout-proxy": bench.start_rollout_proxy,
        "bare": bench.start_bare,
    }
    ready, failures = [], {}
    for name in names:
        try:
            target = starters[name]()
        except StartError as exc:
            failures[name] = f"did not start: {exc}"
            continue
        error, note = preflight(target, "body" in bench.opts.scenarios)
        if error:
            failures[name] = f"pre-flight check failed: {error}"
            continue
        target.note = f"{target.note}; {note}" if target.note else note
        ready.append(target)
    return ready, failures


def rotation(targets: Sequence[Target]) -> list[Target]:
    return sorted(targets, key=lambda t: ROTATION.index(t.name))


def start_grpc_targets(bench: Bench, names: Sequence[str]) -> tuple[list[Target], dict[str, str]]:
    """The grpc scenario's targets (proxies of their own in front of the grpcio servers), each
    checked by grpc_preflight; failures are keyed `grpc/<name>`."""
    try:
        direct = bench.start_grpc_upstreams()
    except StartError as exc:
        return [], {"grpc/direct": f"the grpcio servers did not start: {exc}"}
    starters: dict[str, Callable[[], Target]] = {
        "direct": lambda: direct,
        "nginx": lambda: bench.start_nginx(grpc=True),
        "haproxy": lambda: bench.start_haproxy(grpc=True),
        "rollout-proxy": lambda: bench.start_rollout_proxy(grpc=True),
    }
    ready, failures = [], {}
    for name in (n for n in names if n in GRPC_TARGETS):
        try:
            target = starters[name]()
        except StartError as exc:
            failures[f"grpc/{name}"] = f"did not start: {exc}"
            continue
        error, note = grpc_preflight(target, bench.cert)
        if error:
            failures[f"grpc/{name}"] = f"pre-flight check failed: {error}"
            continue
        target.note = f"{target.note}; {note}"
        ready.append(target)
    return ready, failures


def timed_rounds(
    bench: Bench, targets: Sequence[Target], grpc_targets: Sequence[Target] = ()
) -> list[RunResult]:
    opts = bench.opts
    scenarios = [TIMED_SCENARIOS[s](opts) for s in opts.scenarios if s in TIMED_SCENARIOS]
    runs: list[RunResult] = []
    if opts.warmup > 0:
        over_http = [s for s in scenarios if not s.grpc]
        over_grpc = [s for s in scenarios if s.grpc]
        for group, pool in ((over_http, targets), (over_grpc, grpc_targets)):
            for target in rotation(pool) if group else []:
                measure(bench, group[0], target, 0, opts.warmup)
    for rnd in range(1, opts.rounds + 1):
        for sc in scenarios:
            for target in rotation(grpc_targets if sc.grpc else targets):
                if sc.streams and not sc.grpc and target.name not in H2_TARGETS:
                    continue  # speaks no HTTP/2 here
                result = measure(bench, sc, target, rnd, opts.duration)
                runs.append(result)
                progress(result)
    return runs


def progress(r: RunResult) -> None:
    state = "FLAGGED" if r.flagged else "ok"
    extra = f" {r.mib_s:,.0f} MiB/s" if r.mib_s is not None else ""
    cpu = f" cpu {r.cpu_us_per_req:.1f} us/req" if r.cpu_us_per_req is not None else ""
    print(
        f"  round {r.round} {r.scenario:<6} {r.target:<14} {r.rps:>10,.0f} rps{extra}"
        f"  p50 {r.p50_ms:.3f} p99 {r.p99_ms:.3f} ms{cpu}  {state}",
        flush=True,
    )


def soak_rows(results: Sequence[SoakResult]) -> str:
    head = [
        "target",
        "requests",
        "RPS",
        "RSS after warm-up MiB",
        "RSS last MiB",
        "RSS max MiB",
        "growth",
        "flat",
        "CPU us/req",
        "errors",
    ]
    rows = [
        [
            r.target,
            f"{r.requests:,}",
            f"{r.rps:,.0f}",
            _fmt(r.rss_first_mib, ".1f"),
            _fmt(r.rss_last_mib, ".1f"),
            _fmt(r.rss_max_mib, ".1f"),
            _fmt(None if r.growth is None else 100 * r.growth, "+.1f") + "%",
            "-" if r.flat is None else "yes" if r.flat else "NO",
            _fmt(r.cpu_us_per_req, ".1f"),
            str(r.errors),
        ]
        for r in results
    ]
    return table(head, rows)


def versus_bare(summaries: dict[str, list[Summary]]) -> dict[str, dict[str, float | None]]:
    """Per scenario: rollout-proxy's RPS and CPU us/request, each divided by bare's."""
    out: dict[str, dict[str, float | None]] = {}
    for scenario, rows in summaries.items():
        by_target = {s.target: s for s in rows}
        ours, bare = by_target.get("rollout-proxy"), by_target.get("bare")
        if ours is None or bare is None or not ours.rps or not bare.rps:
            continue
        cpu = None
        if ours.cpu_us_per_req is not None and bare.cpu_us_per_req:
            cpu = ours.cpu_us_per_req / bare.cpu_us_per_req
        out[scenario] = {"rps": ours.rps / bare.rps, "cpu_us_per_req": cpu}
    return out


def bare_line(scenario: str, ratios: dict[str, float | None]) -> str:
    return (
        f"rollout-proxy vs bare: {_fmt(ratios['rps'], '.2f')}x RPS, "
        f"CPU us/req ratio {_fmt(ratios['cpu_us_per_req'], '.2f')} ({scenario})"
    )


def rollout_line(check: RolloutCheck) -> str:
    line = (
        f"rollout-proxy's rollout: {check.status or '?'} at step {check.step} "
        f"({_fmt(check.canary_percent, 'g')}% canary); its analysis counted "
        f"{check.canary_requests:,} canary and {check.baseline_requests:,} baseline requests "
        f"in this step (verdict: {check.verdict or '-'})"
    )
    if check.failure:
        return f"{line}\n  FAILED: {check.failure}\n  verdict: {check.summary}"
    return line


def grpc_ceiling_line(direct: Summary | None) -> str:
    """What the grpcio server manages alone, so a reader sees who the bottleneck is."""
    if direct is None or direct.rps is None:
        return "upstream ceiling: not measured (direct was not run or had errors)"
    return (
        f"upstream ceiling: the stable grpcio server alone (direct, h2c) answers "
        f"{direct.rps:,.0f} req/s at {_fmt(direct.upstream_cpu_pct, '.0f')}% CPU (its core is "
        "shared with h2load); a proxy near 1.00x direct is held back by the server, so compare "
        "CPU us/req"
    )


def report(
    opts: Options,
    info: dict[str, Any],
    targets: Sequence[Target],
    failures: dict[str, str],
    runs: Sequence[RunResult],
    idle: Sequence[IdleResult],
    soak: Sequence[SoakResult],
    rollout: RolloutCheck | None,
    grpc_targets: Sequence[Target] = (),
) -> dict[str, Any]:
    print(
        f"\nrollout-proxy benchmark, {info['date']}, {info['cpu']} x{info['cpus']}, "
        f"Linux {info['kernel']}, nginx {info['nginx']}, wrk {info['wrk']}, "
        f"Python {info['python']}, rollout-proxy: {info['proxy_build']}"
    )
    print(f"{opts.rounds} round(s) x {opts.duration:g} s, medians of runs without errors")
    if opts.tls:
        print("TLS: nginx, haproxy and rollout-proxy listen with TLS; direct is plain HTTP")
    summaries: dict[str, list[Summary]] = {}
    for name in opts.scenarios:
        if name not in TIMED_SCENARIOS:
            continue
        sc = TIMED_SCENARIOS[name](opts)
        names = [t.name for t in rotation(grpc_targets if sc.grpc else targets)]
        by_target = {t: summarize(runs, name, t) for t in names}
        relate_to_nginx(by_target)
        if sc.grpc:
            relate_to_direct(by_target)
        summaries[name] = list(by_target.values())
        print(f"\n{name}: {sc.title}\n{scenario_rows(summaries[name], sc)}")
        if sc.grpc:
            print(grpc_ceiling_line(by_target.get("direct")))
    if idle:
        print(f"\nidle: keep-alive connections held open after one request each\n{idle_rows(idle)}")
    if soak:
        title = soak_scenario(opts).title
        print(f"\nsoak: {title}, RSS sampled over {opts.soak_requests:,} requests")
        print(soak_rows(soak))
    vs_bare = versus_bare(summaries)
    if vs_bare:
        print()
    for scenario, ratios in vs_bare.items():
        print(bare_line(scenario, ratios))
    if rollout is not None:
        print(f"\n{rollout_line(rollout)}")
    for t in targets:
        print(f"  {t.name}: {t.note}")
    for t in grpc_targets:
        print(f"  grpc/{t.name}: {t.note}")
    for line in flagged_lines(runs):
        print(line)
    for name, why in failures.items():
        print(f"  FAILED {name}: {why}")
    return {
        "machine": info,
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "targets": {t.name: {"port": t.port, "note": t.note} for t in targets},
        "grpc_targets": {t.name: {"port": t.port, "note": t.note} for t in grpc_targets},
        "failures": failures,
        "summaries": {k: [asdict(s) for s in v] for k, v in summaries.items()},
        "vs_bare": vs_bare,
        "runs": [asdict(r) | {"flagged": r.flagged, "errors": r.errors} for r in runs],
        "idle": [asdict(i) for i in idle],
        "soak": [asdict(r) for r in soak],
        "rollout": asdict(rollout) if rollout is not None else None,
    }


def execute(opts: Options, workdir: Path) -> int:
    load_cpu, target_cpu, cpu_note = choose_cpus()
    if cpu_note:
        print(f"warning: {cpu_note}")
    if load_cpu is not None:  # this script and its idle client stay off the proxy's CPU
        os.sched_setaffinity(0, {load_cpu})
    nofile = raise_nofile(2 * opts.idle_n + 4096)
    bench = Bench(opts, workdir, (load_cpu, target_cpu), nofile)
    try:
        targets: list[Target] = []
        failures: dict[str, str] = {}
        if any(s != "grpc" for s in opts.scenarios):
            upstream = bench.start_upstream()
            targets, failures = start_targets(bench, opts.targets, upstream)
        grpc_targets: list[Target] = []
        if "grpc" in opts.scenarios:
            grpc_targets, grpc_failures = start_grpc_targets(bench, opts.targets)
            failures.update(grpc_failures)
        for name, why in failures.items():
            print(f"FAILED {name}: {why}", flush=True)
        if any(s != "grpc" for s in opts.scenarios):
            names = ", ".join(t.name for t in rotation(targets)) or "none"
            print(f"targets: {names}", flush=True)
        if "grpc" in opts.scenarios:
            names = ", ".join(t.name for t in rotation(grpc_targets)) or "none"
            print(f"grpc targets: {names}", flush=True)
        runs = timed_rounds(bench, targets, grpc_targets)
        idle = [
            measure_idle(t, opts.idle_n, nofile, 1.0 if opts.quick else 3.0)
            for t in rotation(targets)
            if "idle" in opts.scenarios and t.proc is not None
        ]
        segment_s = 1.0 if opts.quick else 5.0
        soak = [
            measure_soak(bench, t, opts.soak_requests, segment_s)
            for t in rotation(targets)
            if "soak" in opts.scenarios and t.proc is not None
        ]
        proxy = [t for t in targets if t.name == "rollout-proxy"]
        http_runs = [r for r in runs if r.scenario != "grpc"]
        rollout = (
            check_rollout(proxy[0], bool(http_runs or soak), opts.shadow > 0) if proxy else None
        )
        # The grpc proxy's own rollout: still at its first step means its analysis saw no
        # failing gRPC outcome on the canary (a grpc-status error would roll it back).
        grpc_proxy = [t for t in grpc_targets if t.name == "rollout-proxy"]
        grpc_runs = [r for r in runs if r.scenario == "grpc"]
        grpc_rollout = check_rollout(grpc_proxy[0], bool(grpc_runs)) if grpc_proxy else None
        data = report(
            opts, machine_info(), targets, failures, runs, idle, soak, rollout, grpc_targets
        )
        if grpc_rollout is not None:
            print(f"grpc {rollout_line(grpc_rollout)}")
        data["grpc_rollout"] = asdict(grpc_rollout) if grpc_rollout is not None else None
    finally:
        bench.close()
    ok = (
        not failures
        and not any(r.flagged for r in runs)
        and not any(i.failure for i in idle)
        and not any(r.failure for r in soak)
        and (rollout is None or rollout.failure is None)
        and (grpc_rollout is None or grpc_rollout.failure is None)
    )
    data["ok"] = ok
    if opts.json_path:
        opts.json_path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nJSON written to {opts.json_path}")
    print("\nresult: " + ("ok" if ok else "FAILED (see FLAGGED/FAILED lines above)"))
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round x 2 s, tiny scenario, small idle N (< 60 s)",
    )
    p.add_argument("--json", type=Path, help="also write every run and the medians here")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    p.add_argument("--duration", type=float, help="seconds per wrk run (default 10)")
    p.add_argument(
        "--scenarios",
        help=f"comma list of {','.join(ALL_SCENARIOS)} (default: "
        f"{','.join(DEFAULT_SCENARIOS)}; h2 and grpc need --tls)",
    )
    p.add_argument(
        "--targets",
        help=f"comma list of {','.join(ALL_TARGETS)} (default: all available); bare is "
        "loadtests/bare.py, a minimal asyncio.Protocol + httptools proxy measured as a reference",
    )
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument(
        "--body-connections",
        type=int,
        default=16,
        help="wrk connections for the 1 MiB body scenario (default 16)",
    )
    p.add_argument("--idle-n", type=int, help="idle connections (default 10000, quick 200)")
    p.add_argument(
        "--soak-requests",
        type=int,
        help="requests served in the soak scenario (default 2000000, quick 20000)",
    )
    p.add_argument(
        "--proxy-cmd",
        default="{python} -m proxy run -c {config}",
        help="command starting rollout-proxy; {python} and {config} are substituted",
    )
    p.add_argument("--keep-workdir", action="store_true", help="keep configs and logs")
    p.add_argument(
        "--tls",
        action="store_true",
        help="every proxy (nginx, haproxy, rollout-proxy) listens with TLS, a self-signed "
        "certificate made for the run (TLS 1.2+, session resumption), and wrk speaks https to "
        "it; the upstream stays plain HTTP; bare (no TLS) is not run",
    )
    p.add_argument(
        "--shadow",
        type=float,
        default=0.0,
        metavar="PERCENT",
        help="hold rollout-proxy's rollout at a shadow step mirroring PERCENT (e.g. 10 or 100) "
        "of the requests to the canary instead of a 10%% canary step, run with --workers 1; "
        "compare with a run without it (--proxy-cmd '... --workers 1') for the cost of "
        "shadowing (default 0: no shadow step)",
    )
    p.add_argument(
        "--upstream-h2c",
        action="store_true",
        help="rollout-proxy speaks HTTP/2 (h2c, prior knowledge) to the upstream: the same "
        "nginx upstreams on listeners of their own with http2; nginx and haproxy keep HTTP/1.1 "
        "upstreams. Compare with a run without it for the cost of h2c upstreams",
    )
    return p.parse_args(argv)


def _split(value: str | None, allowed: Sequence[str], what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in items if v not in allowed]
    if unknown or not items:
        raise SystemExit(
            f"unknown {what}: {', '.join(unknown) or '(none)'}; expected {', '.join(allowed)}"
        )
    return items


def resolve(ns: argparse.Namespace) -> tuple[Options, dict[str, str | None]]:
    quick = bool(ns.quick)
    targets = _split(ns.targets, ALL_TARGETS, "target")
    scenarios = _split(ns.scenarios, ALL_SCENARIOS, "scenario")
    default_cmd = ns.proxy_cmd == "{python} -m proxy run -c {config}"
    avail = available_targets(not default_cmd)
    chosen = targets or tuple(t for t in ALL_TARGETS if avail[t] is None)
    over_h2 = [s for s in scenarios or () if s in H2_SCENARIOS]
    if over_h2 and not ns.tls:
        raise SystemExit(
            f"the {' and '.join(over_h2)} scenario runs over TLS (ALPN h2, as nginx is set up): "
            "add --tls"
        )
    if ns.tls:
        if targets is not None and "bare" in targets:
            raise SystemExit("--tls: bare speaks no TLS; leave it out of --targets")
        chosen = tuple(t for t in chosen if t != "bare")
    opts = Options(
        rounds=ns.rounds or (1 if quick else 3),
        duration=ns.duration or (2.0 if quick else 10.0),
        warmup=0.0 if quick else 1.0,
        scenarios=scenarios or (("tiny",) if quick else DEFAULT_SCENARIOS),
        targets=chosen,
        explicit_targets=targets is not None,
        connections=ns.connections,
        body_connections=ns.body_connections,
        idle_n=ns.idle_n or (200 if quick else 10000),
        soak_requests=ns.soak_requests or (20_000 if quick else 2_000_000),
        json_path=ns.json,
        proxy_cmd=ns.proxy_cmd,
        quick=quick,
        keep_workdir=ns.keep_workdir,
        shadow=_shadow_percent(ns.shadow),
        tls=bool(ns.tls),
        upstream_h2c=bool(ns.upstream_h2c),
    )
    return opts, avail


def _shadow_percent(value: float) -> float:
    if not 0.0 <= value <= 100.0:
        raise SystemExit(f"--shadow: a percent from 0 to 100, not {value:g}")
    return value


def missing_tools(opts: Options) -> list[str]:
    needed = ["nginx", "wrk"] + (["haproxy"] if "haproxy" in opts.targets else [])
    if any(s in H2_SCENARIOS for s in opts.scenarios):
        needed.append("h2load")
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if "grpc" in opts.scenarios and missing_modules(("grpc",)):
        missing.append("grpcio (pip install grpcio)")
    return missing


@contextlib.contextmanager
def workdir_for(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rollout-bench-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        if keep:
            print(f"work directory kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    opts, avail = resolve(parse_args(argv))
    missing = missing_tools(opts)
    if missing:
        print(f"missing: {', '.join(missing)}; {INSTALL_HINT}", file=sys.stderr)
        return 2
    for name in ALL_TARGETS:
        if name not in opts.targets and not opts.explicit_targets and avail[name]:
            print(f"skipping {name}: {avail[name]}")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    with workdir_for(opts.keep_workdir) as workdir:
        try:
            return execute(opts, workdir)
        except StartError as exc:
            print(f"FAILED: the upstream did not start: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
