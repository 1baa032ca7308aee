"""A real `prometheus` server (Debian package) on a free loopback port, scraping given targets
every second, and a real test service exporting per-version payment counters."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
from pathlib import Path

import aiohttp
from aiohttp import web


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    """`prometheus` with a generated config: one job scraping `targets` (host:port) every 1 s,
    its storage in `workdir`. `url` once started."""

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise AssertionError("prometheus is not installed (apt-get install prometheus)")
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> Path:
        listed = ", ".join(f'"{t}"' for t in self.targets)
        path = self.workdir / "prometheus.yml"
        path.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            f"scrape_configs:\n  - job_name: app\n    static_configs:\n"
            f"      - targets: [{listed}]\n"
        )
        return path

    async def start(self) -> PrometheusServer:
        config = self._config()
        for _ in range(5):  # the free port may be taken between the probe and the bind
            self.port = _free_port()
            self.proc = await asyncio.create_subprocess_exec(
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            if await self._ready():
                return self
            await self.stop()
        raise AssertionError("prometheus did not start")

    async def _ready(self) -> bool:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                if self.proc is not None and self.proc.returncode is not None:
                    return False
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/-/ready") as response:
                        if response.status == 200:
                            return True
                await asyncio.sleep(0.05)
        return False

    async def value(self, query: str) -> float | None:
        """The value of a one-series instant query (None: no series)."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/v1/query", params={"query": query}) as response,
        ):
            result = (await response.json())["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    async def scraped(self, within: float = 20.0) -> None:
        """Wait until every target has been scraped successfully."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            if await self.value("count(up == 1)") == len(self.targets):
                return
            await asyncio.sleep(0.2)
        raise AssertionError("prometheus did not scrape its targets")

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel and nothing answers (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()  # also ends a paused one
            await self.proc.wait()


class PaymentsApp:
    """A service answering POST-less `GET /pay` with 200 always, counting attempts and, every
    `fail_every`-th attempt, a failure; `GET /metrics` exports both counters labelled with
    its version (Prometheus text format)."""

    def __init__(self, version: str, fail_every: int) -> None:
        self.version = version
        self.fail_every = fail_every
        self.attempts = self.failures = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def pay(self, request: web.Request) -> web.Response:
        self.attempts += 1
        failed = self.attempts % self.fail_every == 0
        self.failures += failed
        return web.json_response({"version": self.version, "paid": not failed})

    async def metrics(self, request: web.Request) -> web.Response:
        label = f'{{version="{self.version}"}}'
        text = (
            "# TYPE payment_attempts_total counter\n"
            f"payment_attempts_total{label} {self.attempts}\n"
            "# TYPE payment_failures_total counter\n"
            f"payment_failures_total{label} {self.failures}\n"
        )
        return web.Response(text=text, content_type="text/plain")

    async def start(self) -> PaymentsApp:
        app = web.Application()
        app.router.add_get("/pay", self.pay)
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
