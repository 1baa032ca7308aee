"""config/kubernetes/: the sidecar and edge-gateway examples, held against the Kubernetes API
schemas (kubernetes-validate, strict), the proxy's config loader, its CLI parser, a real
proxy's admin listener and the Dockerfile."""

from __future__ import annotations

import argparse
import posixpath
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from proxy import __version__, cli
from proxy.config import Config, parse_config
from tests.support.dockerfile import stages
from tests.support.exposition import probe_statuses

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "config" / "kubernetes").glob("*.yaml"))
PROXY_CONTAINER = "rollout-proxy"
# The oldest Kubernetes release the examples target, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())


@dataclass(frozen=True)
class Example:
    """One manifest file: its documents by kind, the proxy container and its config."""

    path: Path
    documents: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.documents if d["kind"] == kind]

    @property
    def deployment(self) -> dict[str, Any]:
        (found,) = self.of_kind("Deployment")
        return found

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.pod["containers"]
        (found,) = [c for c in containers if c["name"] == PROXY_CONTAINER]
        return found

    @property
    def args(self) -> argparse.Namespace:
        return cli.build_parser().parse_args(self.container["args"])

    def config_source(self) -> tuple[dict[str, Any], str]:
        """The ConfigMap whose key the container sees at its --config path, and that key:
        mounted as a directory (the key is the file name) or with subPath (the key)."""
        volumes = {v["name"]: v for v in self.pod["volumes"]}
        for mount in self.container["volumeMounts"]:
            source = volumes[mount["name"]].get("configMap")
            if source is None:
                continue
            assert "items" not in source  # keys are file names as they are
            if "subPath" in mount:
                where, key = mount["mountPath"], mount["subPath"]
            else:
                key = posixpath.basename(self.args.config)
                where = posixpath.join(mount["mountPath"], key)
            if where != self.args.config:
                continue
            name = source["name"]
            (found,) = [m for m in self.of_kind("ConfigMap") if m["metadata"]["name"] == name]
            assert key in found["data"], f"ConfigMap {name} has no key {key}"
            return found, key
        raise AssertionError(f"no ConfigMap is mounted at {self.args.config}")

    def raw_config(self) -> dict[str, Any]:
        config_map, key = self.config_source()
        data: dict[str, Any] = yaml.safe_load(config_map["data"][key])
        return data

    def environment(self) -> dict[str, str]:
        """A value for every variable the proxy container declares, fit for the role its
        config gives it (Redis URL, JWT key of at least 32 bytes, admin token)."""
        raw = self.raw_config()
        state = raw.get("state", {})
        keys = {
            rule["key_env"]
            for service in raw["services"]
            for rule in service.get("identity", [])
            if "key_env" in rule
        }
        env: dict[str, str] = {}
        for item in self.container.get("env", []):
            name = item["name"]
            if name == state.get("url_env"):
                env[name] = "redis://redis:6379/0"
            elif name in keys:
                env[name] = secrets.token_hex(32)
            else:
                env[name] = secrets.token_hex(16)
        return env

    def config(self) -> Config:
        return parse_config(self.raw_config(), self.environment())

    def port(self, port: int | str) -> int:
        """A container port by number or by name."""
        if isinstance(port, int):
            return port
        (found,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == port]
        assert isinstance(found, int)
        return found


def _load(path: Path) -> Example:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return Example(path, documents)


EXAMPLES = [_load(path) for path in MANIFESTS]
BY_NAME = {example.path.stem: example for example in EXAMPLES}


def _ids(example: Example) -> str:
    return example.path.stem


def test_both_examples_exist() -> None:
    assert set(BY_NAME) == {"sidecar", "edge-gateway"}


@pytest.mark.parametrize("example", EXAMPLES, ids=_ids)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_passes_the_kubernetes_schema(example: Example, version: str) -> None:
    for document in example.documents:
        kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("example", EXAMPLES, ids=_ids)
def test_container_args_parse_with_the_real_cli(example: Example) -> None:
    args = example.args
    assert args.command == "run"
    assert args.func is cli.cmd_run


@pytest.mark.parametrize("example", EXAMPLES, ids=_ids)
def test_config_map_passes_the_config_loader_with_the_env_the_container_names(
    example: Example,
) -> None:
    config = example.config()  # raises ConfigError naming the key otherwise
    raw = example.raw_config()
    named = {raw["admin"].get("token_env"), raw.get("state", {}).get("url_env")} - {None}
    named |= {
        rule["key_env"]
        for service in raw["services"]
        for rule in service.get("identity", [])
        if "key_env" in rule
    }
    declared = {item["name"] for item in example.container.get("env", [])}
    assert named <= declared  # every variable the config reads is set in the pod
    assert config.listen.host == config.admin.listen.host == "0.0.0.0"


@pytest.mark.parametrize("example", EXAMPLES, ids=_ids)
def test_container_ports_are_the_config_listeners(example: Example) -> None:
    config = example.config()
    ports = {p["name"]: p["containerPort"] for p in example.container["ports"]}
    assert ports == {"http": config.listen.port, "admin": config.admin.listen.port}


@pytest.mark.parametrize("example", EXAMPLES, ids=_ids)
def test_probes_and_scrape_target_the_admin_listener(example: Example) -> None:
    config = example.config()
    admin = config.admin.listen.port
    container = example.container
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == "/readyz"
    assert liveness["httpGet"]["path"] == "/healthz"
    for probe in (readiness, liveness):
        assert example.port(probe["httpGet"]["port"]) == admin
    annotations = example.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == admin
    assert annotations["prometheus.io/path"] == "/metrics"


def test_probe_and_scrape_paths_answer_on_a_real_proxy() -> None:
    paths = {"/metrics"}
    for example in EXAMPLES:
        for probe in ("readinessProbe", "livenessProbe"):
            paths.add(example.container[probe]["httpGet"]["path"])
        annotations = example.deployment["spec"]["template"]["metadata"]["annotations"]
        paths.add(annotations["prometheus.io/path"])
    assert probe_statuses(sorted(paths)) == dict.fromkeys(sorted(paths), 200)


@pytest.mark.parametrize("example", EXAMPLES, ids=_ids)
def test_service_and_selectors_reach_the_proxy_data_port(example: Example) -> None:
    config = example.config()
    pod_labels = example.deployment["spec"]["template"]["metadata"]["labels"]
    selector = example.deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    (service,) = example.of_kind("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for port in service["spec"]["ports"]:
        assert example.port(port["targetPort"]) == config.listen.port
    for budget in example.of_kind("PodDisruptionBudget"):
        assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize("example", EXAMPLES, ids=_ids)
def test_the_pod_runs_the_image_as_its_user_and_stops_in_time(example: Example) -> None:
    _, (_, final) = stages(ROOT / "Dockerfile")
    uid = int(final.all("USER")[-1].args[0].split(":")[0])
    container = example.container
    assert container["securityContext"]["runAsUser"] == uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == f"rollout-proxy:{__version__}"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = example.config().limits.drain_s
    assert float(pre_stop[1]) + drain < example.pod["terminationGracePeriodSeconds"]
    assert "memory" in container["resources"]["limits"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def test_sidecar_runs_next_to_the_service_with_its_state_on_a_volume() -> None:
    example = BY_NAME["sidecar"]
    names = [c["name"] for c in example.pod["containers"]]
    assert len(names) == 2
    (app,) = [c for c in example.pod["containers"] if c["name"] != PROXY_CONTAINER]
    app_port = app["ports"][0]["containerPort"]
    config = example.config()
    (service,) = config.services
    assert [str(u) for u in service.upstreams.stable] == [f"http://127.0.0.1:{app_port}"]
    # a state file has one writer: one replica, and no overlap during an update
    assert config.state.backend == "file"
    assert example.deployment["spec"]["replicas"] == 1
    assert example.deployment["spec"]["strategy"]["type"] == "Recreate"
    assert config.state.path is not None
    state_dir = posixpath.dirname(config.state.path)
    mounts = {m["mountPath"]: m["name"] for m in example.container["volumeMounts"]}
    volumes = {v["name"]: v for v in example.pod["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts[state_dir]]


def test_edge_gateway_replicas_share_redis_and_survive_disruptions() -> None:
    example = BY_NAME["edge-gateway"]
    config = example.config()
    assert config.state.backend == "redis"
    assert config.state.url_env == "ROLLOUT_REDIS_URL"
    assert config.state.prefix == "rollout-proxy"
    assert example.deployment["spec"]["replicas"] == 3
    assert len(config.services) >= 2
    for item in example.container["env"]:  # secrets stay out of the manifest
        assert "secretKeyRef" in item["valueFrom"]
    (budget,) = example.of_kind("PodDisruptionBudget")
    assert 0 < budget["spec"]["minAvailable"] < example.deployment["spec"]["replicas"]
