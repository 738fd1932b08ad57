"""deploy/k8s: the manifests parse, follow the deployment rules, and pass schema validation.

Schema validation uses kubernetes-validate (PyPI, the Kubernetes OpenAPI
schemas bundled offline) in strict mode on every source manifest. When a
``kustomize`` binary is on PATH or in ~/.cache/heatmap/bin, the base and the
overlays are also rendered and the rendered output validated; otherwise that
test is skipped (see docs/operations.md for building it). KEDA's ScaledObject
is a CRD with no bundled schema: its fields are checked here by hand, and
against KEDA's CRD schema (npm ``@kubernetes-models/keda``, run with node)
when deploy/install-validators.sh has installed it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from heatmap.grpc_server import LIVENESS
from heatmap.settings import Settings
from tests.deploy_support import assert_complete, sections

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
K8S_VERSIONS = ("1.29.0", "1.33.0")  # oldest and newest we claim to support, as tested
APP_DEPLOYMENTS = ("gateway", "query-api", "worker")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _resources() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    out: list[dict[str, Any]] = []
    for entry in kustomization["resources"]:
        path = BASE / entry
        if path.is_file():
            out.extend(_docs(path))
    return out


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _resources() if d["kind"] == kind}


def _config_env(name: str = "config.env") -> dict[str, str]:
    pairs = {}
    for line in (BASE / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def _config_maps() -> dict[str, dict[str, str]]:
    """The generated ConfigMaps of the base, by name, from their env files."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    out: dict[str, dict[str, str]] = {}
    for generator in kustomization["configMapGenerator"]:
        data: dict[str, str] = {}
        for env_file in generator["envs"]:
            data.update(_config_env(env_file))
        out[generator["name"]] = data
    return out


def _secrets() -> dict[str, dict[str, str]]:
    return {name: doc["stringData"] for name, doc in _by_kind("Secret").items()}


def _workloads() -> dict[str, dict[str, Any]]:
    """The one container of every Deployment and Job, by workload name."""
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]["containers"][0]
        for doc in _resources()
        if doc["kind"] in ("Deployment", "Job")
    }


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment the container's process sees: envFrom in order, then env."""
    config_maps, secrets = _config_maps(), _secrets()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for var in container.get("env", []):
        ref = var["valueFrom"]["secretKeyRef"]
        env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def test_kustomization_lists_every_manifest_and_nothing_missing() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    listed = {e for e in kustomization["resources"] if not e.startswith("..")}
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for entry in kustomization["resources"]:
        assert (BASE / entry).exists(), entry
    assert (BASE / "../../envoy/kustomization.yaml").resolve().is_file()
    generators = kustomization["configMapGenerator"]
    assert generators[0]["name"] == "heatmap-config"
    for generator in generators:
        for env_file in generator["envs"]:
            assert (BASE / env_file).is_file(), env_file


def test_every_document_is_a_named_kubernetes_object() -> None:
    for doc in _resources():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"]


@pytest.mark.parametrize("name", APP_DEPLOYMENTS)
def test_app_deployments_probe_grpc_health_and_bound_resources(name: str) -> None:
    deployment = _by_kind("Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= (
        deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    [container] = pod["containers"]
    assert container["image"] == "touch-heatmaps"  # tag set by kustomize `images`
    assert container["args"] == [name]
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["grpc"] == {"port": 50051}, probe
    # Liveness asks the "liveness" health service, which backing-system
    # outages do not turn NOT_SERVING (heatmap.grpc_server.LIVENESS).
    assert container["livenessProbe"]["grpc"] == {"port": 50051, "service": LIVENESS}
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}
    assert container["envFrom"][0] == {"configMapRef": {"name": "heatmap-config"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    # The query service also serves the explorer (HTTP) that Envoy routes to.
    http = {"http": Settings().query.http_port} if name == "query-api" else {}
    assert ports == {"grpc": 50051, "metrics": 9464, **http}


def test_the_query_api_service_exposes_the_explorer_port_envoy_routes_to() -> None:
    service = _by_kind("Service")["query-api"]
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports["http"] == (8080, "http")
    envoy = yaml.safe_load((ROOT / "deploy/envoy/envoy.yaml").read_text())
    [cluster] = [c for c in envoy["static_resources"]["clusters"] if c["name"] == "query-api-http"]
    [group] = cluster["load_assignment"]["endpoints"]
    address = group["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert address == {"address": "query-api", "port_value": 8080}
    public = _by_kind("Service")["heatmap"]
    assert {"name": "http", "port": 80, "targetPort": "grpc", "appProtocol": "http"} in (
        public["spec"]["ports"]
    )


def test_every_container_has_requests_and_limits() -> None:
    for doc in _resources():
        if doc["kind"] in ("Deployment", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                assert container["resources"]["requests"], doc["metadata"]["name"]
                assert container["resources"]["limits"], doc["metadata"]["name"]


def test_every_deployment_has_a_disruption_budget() -> None:
    budgets = _by_kind("PodDisruptionBudget")
    for name, deployment in _by_kind("Deployment").items():
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert budgets[name]["spec"]["selector"]["matchLabels"] == labels


@pytest.mark.parametrize("name", ["gateway", "query-api", "envoy"])
def test_stateless_deployments_scale_on_cpu(name: str) -> None:
    hpa = _by_kind("HorizontalPodAutoscaler")[name]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name,
    }
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert hpa["spec"]["minReplicas"] >= 2


def test_workers_scale_on_lag_capped_at_the_partition_count() -> None:
    assert "worker" not in _by_kind("HorizontalPodAutoscaler")  # KEDA makes its own
    scaled = _by_kind("ScaledObject")["worker"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "worker"
    env = _config_env()
    assert spec["maxReplicaCount"] == int(env["HEATMAP_KAFKA_PARTITIONS"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == env["HEATMAP_KAFKA_BOOTSTRAP"]
    assert meta["consumerGroup"] == env["HEATMAP_KAFKA_CONSUMER_GROUP"]
    assert meta["topic"] == env["HEATMAP_KAFKA_TOPIC"]
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0
    # every metadata value is a string, as the CRD requires
    assert all(isinstance(v, str) for v in meta.values())


def test_one_shot_jobs_init_topics_and_migrate() -> None:
    jobs = _by_kind("Job")
    migrate = jobs["heatmap-migrate"]["spec"]["template"]["spec"]
    assert migrate["containers"][0]["args"] == ["migrate", "--create-readonly-user"]
    assert migrate["restartPolicy"] == "OnFailure"
    init = jobs["heatmap-init"]["spec"]["template"]["spec"]["containers"][0]
    assert init["command"][:2] == ["python", "/usr/local/bin/heatmap-bootstrap"]


def test_cluster_overlay_runs_migrate_on_cluster() -> None:
    overlay = yaml.safe_load((K8S / "overlays/clickhouse-cluster/kustomization.yaml").read_text())
    [patch] = overlay["patches"]
    assert patch["target"]["name"] == "heatmap-migrate"
    [op] = yaml.safe_load(patch["patch"])
    assert op["value"][:2] == ["migrate", "--cluster"]
    assert "--create-readonly-user" in op["value"]


def test_config_and_secrets_hold_only_known_settings() -> None:
    config = {k for data in _config_maps().values() for k in data}
    secret = {k for data in _secrets().values() for k in data}
    keys = config | secret
    assert all(k.startswith("HEATMAP_") for k in keys)
    # Every key is a variable heatmap/settings.py reads: a typo would be ignored silently.
    source = (Path(__file__).parents[2] / "heatmap" / "settings.py").read_text()
    unknown = [k for k in keys if f'"{k.removeprefix("HEATMAP_")}"' not in source]
    assert not unknown, unknown
    assert not config & secret
    for key in ("HEATMAP_CLICKHOUSE_URL", "HEATMAP_S3_SECRET_KEY", "HEATMAP_JWT_PUBLIC_KEY"):
        assert key in secret, "secrets stay out of the ConfigMaps"


def test_each_pod_holds_only_the_credentials_it_uses() -> None:
    env = {name: _container_env(c) for name, c in _workloads().items() if name != "envoy"}
    assert sections(env["gateway"]) == {"KAFKA", "JWT"}
    assert sections(env["worker"]) == {"KAFKA", "CLICKHOUSE"}
    assert sections(env["query-api"]) == {"KAFKA", "CLICKHOUSE", "S3", "JWT"}
    assert sections(env["heatmap-init"]) == {"KAFKA", "S3"}
    assert sections(env["heatmap-migrate"]) == {"KAFKA", "CLICKHOUSE"}


def test_the_query_api_reads_clickhouse_as_the_user_migrate_creates() -> None:
    from urllib.parse import urlsplit

    workloads = _workloads()
    query = _container_env(workloads["query-api"])
    migrate = _container_env(workloads["heatmap-migrate"])
    writer = urlsplit(_container_env(workloads["worker"])["HEATMAP_CLICKHOUSE_URL"])
    reader = urlsplit(query["HEATMAP_CLICKHOUSE_URL"])
    assert reader.username not in (None, writer.username)
    assert migrate["HEATMAP_CLICKHOUSE_READONLY_URL"] == query["HEATMAP_CLICKHOUSE_URL"]
    assert urlsplit(migrate["HEATMAP_CLICKHOUSE_URL"]).username == writer.username


@pytest.mark.parametrize(
    "name", ["gateway", "worker", "query-api", "heatmap-init", "heatmap-migrate"]
)
def test_each_pod_s_settings_are_complete_for_its_deployable(name: str) -> None:
    assert_complete(
        Settings.from_env(_container_env(_workloads()[name])), name.removeprefix("heatmap-")
    )


# ------------------------------------------------------------ schema validation


def _validate(docs: list[dict[str, Any]], version: str) -> list[str]:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    problems = []
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # CRD: no bundled schema, checked field by field above
        try:
            kv.validate(doc, version, strict=True)
            checked += 1
        except kv.ValidationError as e:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {e.message}")
    assert checked > 10
    return problems


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_source_manifests_pass_kubernetes_schemas(version: str) -> None:
    assert _validate(_resources(), version) == []


def _kustomize() -> str | None:
    found = shutil.which("kustomize")
    if found:
        return found
    cached = Path(os.environ.get("HEATMAP_CACHE_DIR") or Path.home() / ".cache/heatmap")
    candidate = cached / "bin/kustomize"
    return str(candidate) if candidate.is_file() else None


@pytest.mark.parametrize("target", [BASE, *OVERLAYS], ids=lambda p: p.name)
def test_kustomize_build_renders_valid_manifests(target: Path) -> None:
    kustomize = _kustomize()
    if kustomize is None:
        pytest.skip("no kustomize binary (go install sigs.k8s.io/kustomize/kustomize/v5)")
    done = subprocess.run(
        [kustomize, "build", str(target)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    kinds = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0]) for d in docs}
    assert ("ConfigMap", "envoy-config") in kinds
    assert ("ConfigMap", "heatmap-config") in kinds
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "heatmap"
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("envoy-config"):
            assert doc["data"]["envoy.yaml"] == (ROOT / "deploy/envoy/envoy.yaml").read_text()
    images = {
        c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert all(":" in image for image in images), images
    assert _validate(docs, K8S_VERSIONS[-1]) == []


_KEDA_CHECK = """
const fs = require("fs");
const { ScaledObject } = require(process.argv[1] +
  "/node_modules/@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject");
let bad = 0;
for (const doc of JSON.parse(fs.readFileSync(0, "utf8"))) {
  try { new ScaledObject(doc).validate(); }
  catch (e) { bad++; console.error(doc.metadata.name + ": " + e.message); }
}
process.exit(bad ? 1 : 0);
"""


def _keda_models() -> tuple[str, Path]:
    node = shutil.which("node")
    cached = Path(os.environ.get("HEATMAP_CACHE_DIR") or Path.home() / ".cache/heatmap")
    models = cached / "keda-models"
    if node is None or not (models / "node_modules/@kubernetes-models/keda").is_dir():
        pytest.skip("no node + @kubernetes-models/keda (bash deploy/install-validators.sh)")
    return node, models


def _keda_validate(docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    node, models = _keda_models()
    return subprocess.run(
        [node, "-e", _KEDA_CHECK, str(models)],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_scaled_object_matches_the_keda_crd_schema() -> None:
    scaled = [d for d in _resources() if d["kind"] == "ScaledObject"]
    assert scaled
    done = _keda_validate(scaled)
    assert done.returncode == 0, done.stderr
    broken = json.loads(json.dumps(scaled[0]))
    broken["spec"]["maxReplicaCount"] = "24"  # a string: the schema wants an integer
    assert _keda_validate([broken]).returncode == 1


def test_the_kafka_sasl_ssl_overlay_reaches_every_kafka_client_and_only_them() -> None:
    kustomize = _kustomize()
    if kustomize is None:
        pytest.skip("no kustomize binary (go install sigs.k8s.io/kustomize/kustomize/v5)")
    done = subprocess.run(
        [kustomize, "build", str(K8S / "overlays/kafka-sasl-ssl")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    data = {
        (d["kind"], d["metadata"]["name"]): d.get("data") or d.get("stringData") or {}
        for d in docs
        if d["kind"] in ("ConfigMap", "Secret")
    }
    for doc in docs:
        if doc["kind"] not in ("Deployment", "Job") or doc["metadata"]["name"] == "envoy":
            continue
        name = doc["metadata"]["name"]
        pod = doc["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            kind, ref = next(iter(source.items()))
            env.update(data[("ConfigMap" if kind == "configMapRef" else "Secret", ref["name"])])
        kafka_client = name in ("gateway", "worker", "heatmap-init")
        assert ("HEATMAP_KAFKA_SECURITY_PROTOCOL" in env) is kafka_client, name
        if not kafka_client:
            Settings.from_env(env)  # nothing Kafka-secure it cannot satisfy
            continue
        # The CA file named is mounted from a Secret that holds it.
        ca_file = Path(env.pop("HEATMAP_KAFKA_SSL_CA_FILE"))
        [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(ca_file.parent)]
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert ca_file.name in data[("Secret", volume["secret"]["secretName"])]
        kafka = Settings.from_env(env).kafka
        assert kafka.security_protocol == "sasl_ssl"
        assert kafka.sasl_mechanism == "SCRAM-SHA-512"
        assert kafka.sasl_username
        assert kafka.sasl_password
    # KEDA reads the lag over the same listener with the same user and CA.
    [scaled] = [d for d in docs if d["kind"] == "ScaledObject"]
    [trigger] = scaled["spec"]["triggers"]
    [config] = [
        v for (k, n), v in data.items() if k == "ConfigMap" and n.startswith("heatmap-config-")
    ]
    assert trigger["metadata"]["bootstrapServers"] == config["HEATMAP_KAFKA_BOOTSTRAP"]
    assert (trigger["metadata"]["sasl"], trigger["metadata"]["tls"]) == ("scram_sha512", "enable")
    [auth] = [d for d in docs if d["kind"] == "TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password", "ca"}
    for ref in refs.values():
        assert ref["key"] in data[("Secret", ref["name"])]
