"""The Dockerfile, checked by doing what the image does, without a Docker engine, from nothing.

The builder stage is mirrored on the files the .dockerignore lets into the build: its COPYs
are applied and the wheel is built with its `pip wheel` command under its ENV (the compiled
build: the C compiler its apt-get RUN would add is installed here by .ci/run), by the pip of a
virtual environment made for the test (`python3 -m venv`: no system site-packages), with
pip's build isolation on and no cache, so nothing installed on this machine can help the build.
The final stage is mirrored in a second new virtual environment that gets the wheel and its
dependencies only, as the image's `pip install` does (no source tree, no PYTHONPATH). Then the
proxy is started with the image's ENTRYPOINT + CMD as parsed from the Dockerfile, on the config
the image copies (its listeners moved to free loopback ports, its state into a temporary
directory and its upstreams to a local one: the test may not take fixed ports or write to
/var), it must serve a request through its compiled modules, the parsed HEALTHCHECK command
must succeed, and SIGTERM must end the process with status 0.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import load_config, parse_config
from proxy.errors import ConfigError
from tests.support.client import closed_port
from tests.support.dockerfile import Stage, build_context, stages

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
_READY = "rollout-proxy: data plane on "


def _stages() -> tuple[Stage, Stage]:
    _, found = stages(DOCKERFILE)
    builder, final = found
    return builder, final


def _command() -> list[str]:
    """What the container runs: ENTRYPOINT followed by CMD (both exec form)."""
    _, final = _stages()
    entrypoint, cmd = final.one("ENTRYPOINT"), final.one("CMD")
    # exec form: the proxy is PID 1 and gets docker stop's SIGTERM itself (no shell between)
    assert entrypoint.exec_form
    assert cmd.exec_form
    return [*entrypoint.args, *cmd.args]


def _config_path() -> str:
    args = _command()
    assert args[:2] == ["rollout-proxy", "run"]
    option = "--config" if "--config" in args else "-c"
    return args[args.index(option) + 1]


def _image_file(image_path: str) -> Path:
    """The repository file a final-stage COPY puts at `image_path`."""
    _, final = _stages()
    for copy in final.all("COPY"):
        if "from" not in copy.flags and copy.args[-1] == image_path:
            (source,) = copy.args[:-1]
            return ROOT / source
    raise AssertionError(f"no COPY puts a file at {image_path}")


def _healthcheck() -> list[str]:
    _, final = _stages()
    check = final.one("HEALTHCHECK")
    assert check.flags["type"] == "CMD"
    assert check.exec_form
    return check.args


def _image_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(_image_file(_config_path()).read_text())
    return data


def test_two_stages_on_slim_python_311() -> None:
    builder, final = _stages()
    assert builder.name == "builder"
    for stage in (builder, final):
        assert stage.base.startswith("python:3.11-slim"), stage.base
    *tools, build = builder.all("RUN")
    assert build.args[:2] == ["pip", "wheel"]
    assert "--no-deps" in build.args
    # before it, only the C compiler the compiled build needs (which .ci/run installs here)
    (compiler,) = tools
    assert compiler.args[:2] == ["apt-get", "update"]
    assert "gcc" in compiler.args
    assert shutil.which("gcc") is not None
    copied = [c for c in final.all("COPY") if c.flags.get("from") == "builder"]
    assert len(copied) == 1  # the wheel directory and nothing else from the builder
    (install, *_) = final.all("RUN")
    assert install.args[:3] == ["pip", "install", "--no-cache-dir"]
    assert install.args[3] == copied[0].args[-1].rstrip("/") + "/*.whl"


def test_runs_as_an_unprivileged_user() -> None:
    _, final = _stages()
    user = final.all("USER")[-1].args[0]
    assert user.split(":")[0] not in {"root", "0"}
    uid = user.split(":")[0]
    (install, *_) = final.all("RUN")
    assert f"--uid {uid}" in install.text


# `docker run -e ROLLOUT_ADMIN_TOKEN=...`: the image's admin listener is not on loopback, and
# the proxy refuses to start one there without a token.
IMAGE_SECRETS = {"ROLLOUT_ADMIN_TOKEN": "image-test-token"}


def test_the_image_needs_its_admin_token() -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen: 0\.0\.0\.0 is not a loopback"):
        parse_config(_image_config(), {})


def test_exposes_both_listeners_and_stops_with_sigterm() -> None:
    _, final = _stages()
    config = parse_config(_image_config(), IMAGE_SECRETS)
    exposed = {int(port) for item in final.all("EXPOSE") for port in item.args}
    assert exposed == {config.listen.port, config.admin.listen.port}
    assert config.listen.host == config.admin.listen.host == "0.0.0.0"  # reachable from outside
    assert final.one("STOPSIGNAL").args == ["SIGTERM"]
    healthcheck = " ".join(_healthcheck())
    assert f"http://127.0.0.1:{config.admin.listen.port}/healthz" in healthcheck
    assert config.state.path is not None
    state_dir = str(Path(config.state.path).parent)
    assert final.all("WORKDIR")[-1].args == [state_dir]  # created for the user, and writable


def _mirror_builder(context: Path, src: Path) -> None:
    """Apply the builder stage's COPYs from the build context into `src` (its WORKDIR)."""
    builder, _ = _stages()
    for copy in builder.all("COPY"):
        *sources, dest = copy.args
        for source in sources:
            origin = context / source
            assert origin.exists(), f"{source} is not in the build context (.dockerignore?)"
            target = src / dest / origin.name if dest.endswith("/") else src / dest
            if origin.is_dir():
                shutil.copytree(origin, target, dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)


def _clean_env() -> dict[str, str]:
    # without PYTHONPATH: pip must not take this checkout for an installed rollout-proxy
    # (nor the virtual environment the suite runs in for the one it builds in)
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}


def _env_of(stage: Stage) -> dict[str, str]:
    return dict(arg.partition("=")[::2] for item in stage.all("ENV") for arg in item.args)


def _start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**_clean_env(), **(env or {})},
    )


def _finish(proc: subprocess.Popen[str]) -> None:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"{proc.args!r} failed:\n{out}"


def _fresh_venv(path: Path) -> Path:
    """A new virtual environment with pip and nothing else; its python."""
    _finish(_start(["python3", "-m", "venv", str(path)]))
    return path / "bin" / "python"


def _builder_pip(python: Path, src: Path, wheels: Path) -> list[str]:
    """The builder stage's `pip wheel` command, run by `python` on `src`."""
    builder, _ = _stages()
    *_, build = builder.all("RUN")
    args = [str(wheels) if arg == "/wheels" else arg for arg in build.args]
    assert args[-1] == ".", args
    return [str(python), "-m", *args[:-1], str(src)]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A virtual environment holding what the final stage holds: the wheel and its deps."""
    root = tmp_path_factory.mktemp("image")
    context = build_context(ROOT, root / "context")
    src = root / "src"
    _mirror_builder(context, src)
    wheels = root / "wheels"
    builder, final = _stages()
    quiet = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
    build_python = _fresh_venv(root / "build-venv")
    _finish(_start(_builder_pip(build_python, src, wheels), {**_env_of(builder), **quiet}))
    (wheel,) = wheels.glob("rollout_proxy-*.whl")
    (install, *_) = final.all("RUN")
    pip_install = install.text.split("&&")[0].split()
    assert pip_install[:3] == ["pip", "install", "--no-cache-dir"], pip_install
    runtime_python = _fresh_venv(root / "venv")
    _finish(_start([str(runtime_python), "-m", *pip_install[:3], str(wheel)], quiet))
    yield root / "venv"
    shutil.rmtree(root, ignore_errors=True)


def _environment(venv: Path) -> dict[str, str]:
    """The image's ENV and a PATH that finds its `rollout-proxy` and `python`: nothing of
    this checkout (no PYTHONPATH), so the proxy can only come from the installed wheel."""
    _, final = _stages()
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.defpath}"}
    return {**env, **_env_of(final), **IMAGE_SECRETS}


def _test_config(workdir: Path, upstream: str) -> tuple[Path, int]:
    """The image's config with listeners on free loopback ports, state in `workdir` and every
    upstream at `upstream`."""
    data = _image_config()
    admin_port = closed_port()
    data["listen"] = f"127.0.0.1:{closed_port()}"
    data["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    data["state"]["path"] = str(workdir / "rollouts.json")
    for service in data["services"]:
        service["upstreams"] = {"stable": [upstream], "canary": [upstream]}
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    load_config(path, {})
    return path, admin_port


def _healthcheck_on(port: int) -> list[str]:
    image_port = parse_config(_image_config(), IMAGE_SECRETS).admin.listen.port
    command = _healthcheck()
    return [arg.replace(f":{image_port}/", f":{port}/") for arg in command]


def _wait_ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert _READY in line, line + proc.stderr.read()
    return line


class _Origin(BaseHTTPRequestHandler):
    """The service behind the image's proxy: says which path it was asked for."""

    def do_GET(self) -> None:
        body = f"origin saw {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass


@pytest.fixture
def origin() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_image_serves_passes_its_healthcheck_and_drains_on_sigterm(
    image: Path, tmp_path: Path, origin: str
) -> None:
    config, admin_port = _test_config(tmp_path, origin)
    command = [str(config) if arg == _config_path() else arg for arg in _command()]
    env = _environment(image)
    health = _healthcheck_on(admin_port)
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        ready = _wait_ready(proc)
        assert f"admin on http://127.0.0.1:{admin_port} (compiled data plane (mypyc)" in ready
        data_url = ready.split("data plane on ", 1)[1].split(",", 1)[0]
        with urllib.request.urlopen(f"{data_url}/through/the/image", timeout=5) as reply:
            assert reply.status == 200
            assert reply.read() == b"origin saw /through/the/image"
            assert reply.headers["X-Request-ID"]  # the proxy's own answer, not the origin's
        started = time.monotonic()
        check = subprocess.run(health, cwd=tmp_path, env=env, capture_output=True, timeout=10)
        assert check.returncode == 0, check.stderr
        assert time.monotonic() - started < 3  # within the HEALTHCHECK --timeout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert "draining" in proc.stderr.read()
    # the same check fails once nothing answers: it can tell a dead proxy
    failed = subprocess.run(health, cwd=tmp_path, env=env, capture_output=True, timeout=10)
    assert failed.returncode != 0


def test_the_installed_proxy_comes_from_the_wheel(image: Path) -> None:
    python = image / "bin" / "python"
    probe = "import proxy, sys; print(proxy.__file__)"
    out = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, env={}, cwd="/", check=True
    )
    assert Path(out.stdout.strip()).is_relative_to(image)
    # the builder's compiled build, which is what the benchmark measures
    version = subprocess.run(
        [str(image / "bin" / "rollout-proxy"), "--version"],
        capture_output=True,
        text=True,
        env={},
        cwd="/",
        check=True,
    )
    assert "(compiled data plane (mypyc))" in version.stdout, version.stdout
    # the modules a request runs through are the compiled ones, from the wheel
    relay = subprocess.run(
        [str(python), "-c", "import proxy.http.relay as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        env={},
        cwd="/",
        check=True,
    ).stdout.strip()
    assert relay.endswith(".so"), relay
    assert Path(relay).is_relative_to(image)
    # only the runtime dependencies: no test tools went in
    assert not list(image.glob("lib/python*/site-packages/pytest"))
