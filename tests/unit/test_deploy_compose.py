"""deploy/compose: the single-host stack is well-formed and wired the way the docs say.

Three levels, each skipped only when its tool is absent: the Compose
Specification JSON schema (check-jsonschema's vendored copy, from PyPI), the
real ``docker compose config`` (the docker CLI plugin, or a ``docker-compose``
v2 binary on PATH or in ~/.cache/heatmap/bin: deploy/install-validators.sh
builds one from the Go module proxy), and the structural rules below. No
container runs here (no Docker engine on this machine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from heatmap.settings import Settings
from tests.deploy_support import assert_complete, sections

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "deploy/compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
APP_SERVICES = ("gateway", "worker", "query-api")
ONE_SHOTS = ("init", "migrate")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _env_file(name: str = "heatmap.env") -> dict[str, str]:
    pairs = {}
    for line in (COMPOSE_DIR / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    return pairs


def _service_env(name: str) -> dict[str, str]:
    """What the container's process sees: its env files in order, then ``environment``."""
    service = _services()[name]
    env: dict[str, str] = {}
    for file in service["env_file"]:
        env.update(_env_file(file))
    env.update({k: str(v) for k, v in service.get("environment", {}).items()})
    return env


def test_the_stack_has_every_part() -> None:
    assert set(_services()) == {
        "kafka",
        "clickhouse",
        "minio",
        "envoy",
        "init",
        "migrate",
        "prometheus",
        *APP_SERVICES,
    }
    assert _services()["prometheus"]["profiles"] == ["monitoring"]


@pytest.mark.parametrize("name", APP_SERVICES + ONE_SHOTS)
def test_project_services_share_one_image_and_the_env_file(name: str) -> None:
    service = _services()[name]
    assert service["image"] == "${HEATMAP_IMAGE:-touch-heatmaps:dev}"
    assert service["build"] == {"context": "../..", "dockerfile": "deploy/Dockerfile"}
    assert service["env_file"][0] == "heatmap.env"
    for file in service["env_file"]:
        assert (COMPOSE_DIR / file).is_file(), file
    assert service["read_only"] is True


def test_entry_points() -> None:
    services = _services()
    for name in APP_SERVICES:
        assert services[name]["command"] == [name]
    assert services["migrate"]["command"] == ["migrate", "--create-readonly-user"]
    assert services["init"]["entrypoint"] == ["python", "/usr/local/bin/heatmap-bootstrap"]


def test_workers_can_scale() -> None:
    worker = _services()["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # no fixed host port: `--scale worker=N` must not collide
    partitions = int(_env_file()["HEATMAP_KAFKA_PARTITIONS"])
    assert partitions >= 2


def test_start_order() -> None:
    services = _services()

    def needs(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in services[name].get("depends_on", {}).items()}

    assert needs("init") == {"kafka": "service_healthy", "minio": "service_healthy"}
    assert needs("migrate") == {"clickhouse": "service_healthy"}
    assert needs("gateway") == {"init": "service_completed_successfully"}
    for name in ("worker", "query-api"):
        assert needs(name) == {
            "init": "service_completed_successfully",
            "migrate": "service_completed_successfully",
        }
    assert needs("envoy") == {"gateway": "service_healthy", "query-api": "service_healthy"}
    for name in ("kafka", "clickhouse", "minio", "envoy", *APP_SERVICES):
        assert "test" in services[name]["healthcheck"], name


def test_published_ports_are_loopback_only() -> None:
    for name, service in _services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert "127.0.0.1:50051:8080" in _services()["envoy"]["ports"]
    assert "127.0.0.1:8080:8080" in _services()["envoy"]["ports"]  # the explorer, for browsers


def test_images_are_pinned() -> None:
    for name, service in _services().items():
        image = service["image"]
        if name in APP_SERVICES + ONE_SHOTS:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo, (name, image)
        assert tag not in ("", "latest"), (name, image)
    assert _services()["kafka"]["image"].startswith("apache/kafka:4.1.")


def test_kafka_is_kraft_without_auto_created_topics() -> None:
    env = _services()["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    bootstrap = _env_file()["HEATMAP_KAFKA_BOOTSTRAP"]
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{bootstrap}"


def test_credentials_match_between_the_env_files_and_the_backing_services() -> None:
    services = _services()
    ch_env = services["clickhouse"]["environment"]
    for name in ("worker", "migrate"):
        env = _service_env(name)
        clickhouse = urlsplit(env["HEATMAP_CLICKHOUSE_URL"])
        assert (clickhouse.username, clickhouse.password) == (
            ch_env["CLICKHOUSE_USER"],
            ch_env["CLICKHOUSE_PASSWORD"],
        ), name
        assert clickhouse.hostname == "clickhouse"
        assert clickhouse.path.lstrip("/") == env["HEATMAP_CLICKHOUSE_DATABASE"]
    minio_env = services["minio"]["environment"]
    for name in ("query-api", "init"):
        env = _service_env(name)
        assert env["HEATMAP_S3_ACCESS_KEY"] == minio_env["MINIO_ROOT_USER"]
        assert env["HEATMAP_S3_SECRET_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
        assert urlsplit(env["HEATMAP_S3_ENDPOINT"]).hostname == "minio"


def test_each_container_holds_only_the_credentials_it_uses() -> None:
    assert sections(_service_env("gateway")) == {"KAFKA", "JWT"}
    assert sections(_service_env("worker")) == {"KAFKA", "CLICKHOUSE"}
    assert sections(_service_env("query-api")) == {"KAFKA", "CLICKHOUSE", "S3", "JWT"}
    assert sections(_service_env("init")) == {"KAFKA", "S3"}
    assert sections(_service_env("migrate")) == {"KAFKA", "CLICKHOUSE"}


def test_the_query_api_reads_clickhouse_as_the_user_migrate_creates() -> None:
    admin = _services()["clickhouse"]["environment"]["CLICKHOUSE_USER"]
    query = urlsplit(_service_env("query-api")["HEATMAP_CLICKHOUSE_URL"])
    assert query.username not in (None, admin)
    assert query.password
    migrate = _service_env("migrate")
    assert (
        migrate["HEATMAP_CLICKHOUSE_READONLY_URL"]
        == _service_env("query-api")["HEATMAP_CLICKHOUSE_URL"]
    )
    assert urlsplit(migrate["HEATMAP_CLICKHOUSE_URL"]).username == admin
    assert "--create-readonly-user" in _services()["migrate"]["command"]


@pytest.mark.parametrize("name", APP_SERVICES + ONE_SHOTS)
def test_each_container_s_settings_are_complete_for_its_deployable(name: str) -> None:
    assert_complete(Settings.from_env(_service_env(name)), name)


def test_the_compose_file_matches_the_compose_specification_schema() -> None:
    tool = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    if not Path(tool).exists():
        pytest.skip("check-jsonschema not installed (pip install check-jsonschema)")
    done = subprocess.run(
        [tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _compose_command() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return ["docker", "compose"]
    standalone = shutil.which("docker-compose")
    cached = Path(os.environ.get("HEATMAP_CACHE_DIR") or Path.home() / ".cache/heatmap")
    for candidate in (standalone, str(cached / "bin/docker-compose")):
        if candidate and Path(candidate).is_file():
            version = subprocess.run(
                [candidate, "version"], capture_output=True, text=True, timeout=30, check=False
            )
            if version.returncode == 0 and "version 1." not in version.stdout:
                return [candidate]
    return None


def test_docker_compose_config_accepts_the_stack() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("no `docker compose` v2 (deploy/install-validators.sh builds one)")
    done = subprocess.run(
        [*command, "--project-directory", str(COMPOSE_DIR), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=COMPOSE_DIR,
    )
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    worker = resolved["services"]["worker"]
    # env_file resolved into the service environment
    assert worker["environment"]["HEATMAP_KAFKA_CONSUMER_GROUP"] == "heatmap-workers"
    assert worker["command"] == ["worker"]
    envoy_volume = resolved["services"]["envoy"]["volumes"][0]
    assert Path(envoy_volume["source"]) == ROOT / "deploy/envoy/envoy.yaml"
