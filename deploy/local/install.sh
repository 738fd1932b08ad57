#!/usr/bin/env bash
# Set up a development machine: system packages (Java 17, Maven, Go), the
# project venv (.venv) and the cached local services (Kafka jars, SeaweedFS).
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v go >/dev/null || need_apt+=(golang-go)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== apt-get install ${need_apt[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_apt[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "== pip install -e '.[dev]'"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

echo "== local services (cached in ${HEATMAP_CACHE_DIR:-$HOME/.cache/heatmap})"
.venv/bin/python - <<'PY'
import time
from heatmap_devtools.localinfra.kafka import ensure_jars
from heatmap_devtools.localinfra.seaweedfs import ensure_binary
t = time.monotonic(); print("kafka jars:", ensure_jars(), f"({time.monotonic() - t:.0f}s)")
t = time.monotonic(); print("seaweedfs:", ensure_binary(), f"({time.monotonic() - t:.0f}s)")
PY

echo "== deploy validators (kustomize, docker compose, envoy-validate, KEDA schemas)"
bash deploy/install-validators.sh
