"""deploy/envoy/envoy.yaml: every RPC of the proto reaches the deployment that serves it.

No Envoy binary runs here, so the route table is evaluated the way Envoy does
(first match wins: ``path`` exact, ``prefix``, ``safe_regex`` full match) over
the method paths read from the compiled proto descriptor, not from a list
typed into this test. The config as a whole is checked against Envoy's API
(strict proto decoding + protoc-gen-validate rules) by ``envoy-validate``
(deploy/envoy/validate, built by deploy/install-validators.sh) when present.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from heatmap.settings import Settings
from schemas.heatmap.v1 import heatmap_pb2

ROOT = Path(__file__).resolve().parents[2]
ENVOY = ROOT / "deploy/envoy/envoy.yaml"
SERVICE = heatmap_pb2.DESCRIPTOR.services_by_name["HeatmapService"]
GATEWAY_METHODS = {"IngestTouchEvents"}
HCM = "envoy.filters.network.http_connection_manager"


def _config() -> dict[str, Any]:
    data = yaml.safe_load(ENVOY.read_text())
    assert isinstance(data, dict)
    return data


def _listener(name: str) -> dict[str, Any]:
    listeners = _config()["static_resources"]["listeners"]
    found: dict[str, Any] = next(x for x in listeners if x["name"] == name)
    return found


def _hcm(listener: dict[str, Any]) -> dict[str, Any]:
    [chain] = listener["filter_chains"]
    [hcm] = [f for f in chain["filters"] if f["name"] == HCM]
    config: dict[str, Any] = hcm["typed_config"]
    return config


def _routes() -> list[dict[str, Any]]:
    [vhost] = _hcm(_listener("grpc_ingress"))["route_config"]["virtual_hosts"]
    assert vhost["domains"] == ["*"]
    routes: list[dict[str, Any]] = vhost["routes"]
    return routes


def _clusters() -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in _config()["static_resources"]["clusters"]}


def route_for(path: str, *, grpc: bool = True) -> str | None:
    """The cluster Envoy sends ``path`` to (first matching route), or None (404)."""
    for route in _routes():
        match = route["match"]
        if "grpc" in match and not grpc:
            continue
        if "path" in match:
            hit = path == match["path"]
        elif "prefix" in match:
            hit = path.startswith(match["prefix"])
        elif "safe_regex" in match:
            hit = re.fullmatch(match["safe_regex"]["regex"], path) is not None
        else:
            raise AssertionError(f"unknown match kind in {match}")
        if hit:
            cluster: str = route["route"]["cluster"]
            return cluster
    return None


def test_the_proto_has_the_six_rpcs_this_test_routes() -> None:
    names = {m.name for m in SERVICE.methods}
    assert names >= {
        "IngestTouchEvents",
        "QueryHeatmapData",
        "ListScreenshots",
        "UploadScreenshot",
        "GetScreenshot",
        "RenderHeatmap",
    }


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_every_rpc_goes_to_the_service_that_implements_it(method: str) -> None:
    path = f"/{SERVICE.full_name}/{method}"
    expected = "gateway" if method in GATEWAY_METHODS else "query-api"
    assert route_for(path) == expected, path


def test_a_future_rpc_named_like_ingest_does_not_go_to_the_gateway() -> None:
    assert route_for(f"/{SERVICE.full_name}/IngestTouchEventsV2") == "query-api"


@pytest.mark.parametrize(
    "path",
    [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ],
)
def test_health_and_reflection_are_routed(path: str) -> None:
    assert route_for(path) == "query-api"


def test_unknown_paths_are_not_routed() -> None:
    assert route_for("/other.v1.Service/Method") is None
    assert route_for("/other.v1.Service/Method", grpc=False) is None
    assert route_for("/metrics", grpc=False) is None
    assert route_for("/explorerx", grpc=False) is None


@pytest.mark.parametrize("method", [m.name for m in SERVICE.methods])
def test_browser_calls_go_to_the_query_service_http_port(method: str) -> None:
    # Connect RPC from the explorer: the method paths without a gRPC content
    # type reach the query service's HTTP port (which answers 404 for the
    # gateway's IngestTouchEvents itself); gRPC calls keep their routes.
    assert route_for(f"/{SERVICE.full_name}/{method}", grpc=False) == "query-api-http"


@pytest.mark.parametrize(
    "path", ["/", "/explorer", "/explorer/", "/explorer/index.html", "/explorer/js/app.js"]
)
def test_the_explorer_page_is_routed(path: str) -> None:
    assert route_for(path, grpc=False) == "query-api-http"
    assert route_for(path) == "query-api-http"  # whatever the content type


def test_the_explorer_cluster_is_the_query_service_http_port_checked_on_healthz() -> None:
    cluster = _clusters()["query-api-http"]
    assert cluster["type"] == "STRICT_DNS"
    # HTTP/1.1 upstream (uvicorn), not the gRPC clusters' HTTP/2
    assert "typed_extension_protocol_options" not in cluster
    [check] = cluster["health_checks"]
    assert check["http_health_check"]["path"] == "/healthz"
    [group] = cluster["load_assignment"]["endpoints"]
    [endpoint] = group["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert address == {"address": "query-api", "port_value": Settings().query.http_port}
    [rpc] = [r for r in _routes() if r["name"] == "explorer-rpc"]
    assert rpc["route"]["retry_policy"]["retry_on"] == "connect-failure"


@pytest.mark.parametrize("name", ["gateway", "query-api"])
def test_upstream_clusters_speak_http2_and_check_grpc_health(name: str) -> None:
    cluster = _clusters()[name]
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in options["explicit_http_config"]
    [check] = cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] == SERVICE.full_name
    # every pod behind a headless Service / compose DNS name, balanced per request
    assert cluster["type"] == "STRICT_DNS"
    [group] = cluster["load_assignment"]["endpoints"]
    [endpoint] = group["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert address == {"address": name, "port_value": 50051}


def test_every_route_points_at_a_defined_cluster() -> None:
    clusters = _clusters()
    for listener in _config()["static_resources"]["listeners"]:
        for vhost in _hcm(listener)["route_config"]["virtual_hosts"]:
            for route in vhost["routes"]:
                assert route["route"]["cluster"] in clusters


def test_ingest_is_not_retried_after_the_gateway_may_have_seen_it() -> None:
    [ingest] = [r for r in _routes() if r["name"] == "ingest"]
    retry_on = set(ingest["route"]["retry_policy"]["retry_on"].split(","))
    assert retry_on <= {"connect-failure", "refused-stream"}


def test_admin_interface_is_loopback_only() -> None:
    assert _config()["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    [vhost] = _hcm(_listener("envoy_admin_public"))["route_config"]["virtual_hosts"]
    assert {r["match"]["path"] for r in vhost["routes"]} == {"/ready", "/stats/prometheus"}


def test_compose_and_kubernetes_name_the_upstreams_like_envoy() -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose/docker-compose.yml").read_text())
    services = {
        doc["metadata"]["name"]: doc
        for f in (ROOT / "deploy/k8s/base").glob("*.yaml")
        for doc in yaml.safe_load_all(f.read_text())
        if doc and doc.get("kind") == "Service"
    }
    for name in ("gateway", "query-api"):
        assert name in compose["services"]
        assert services[name]["spec"]["clusterIP"] == "None"  # headless: Envoy sees every pod
        assert 50051 in {p["port"] for p in services[name]["spec"]["ports"]}
    envoy_mount = compose["services"]["envoy"]["volumes"][0]
    assert envoy_mount.startswith("../envoy/envoy.yaml:")
    generator = yaml.safe_load((ROOT / "deploy/envoy/kustomization.yaml").read_text())
    assert generator["configMapGenerator"][0]["files"] == ["envoy.yaml"]


def _envoy_validate() -> str:
    found = shutil.which("envoy-validate")
    cached = Path(os.environ.get("HEATMAP_CACHE_DIR") or Path.home() / ".cache/heatmap")
    candidate = found or str(cached / "bin/envoy-validate")
    if not Path(candidate).is_file():
        pytest.skip("no envoy-validate (bash deploy/install-validators.sh builds it)")
    return candidate


def _run_validator(tool: str, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool], input=json.dumps(config), capture_output=True, text=True, timeout=60, check=False
    )


def test_config_is_valid_for_envoys_api() -> None:
    tool = _envoy_validate()
    done = _run_validator(tool, _config())
    assert done.returncode == 0, done.stderr


def test_the_api_validator_catches_mistakes() -> None:
    tool = _envoy_validate()
    typo = copy.deepcopy(_config())
    hcm = _hcm(typo["static_resources"]["listeners"][0])
    hcm["stat_prefx"] = hcm.pop("stat_prefix")
    assert _run_validator(tool, typo).returncode == 1
    bad_port = copy.deepcopy(_config())
    cluster = bad_port["static_resources"]["clusters"][0]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    endpoint["address"]["socket_address"]["port_value"] = 70000
    assert _run_validator(tool, bad_port).returncode == 1
