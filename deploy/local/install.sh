#!/usr/bin/env bash
# Set up what `heatmap dev` needs, and nothing more: Java 17 and Maven (the
# Kafka broker runs from its Maven Central jars), the project venv (.venv)
# with the runtime package, and the Kafka jars cached in
# ${HEATMAP_CACHE_DIR:-~/.cache/heatmap}. The test-only tools (dev extra, the
# S3 server build, the deploy validators, Chromium) are
# deploy/local/install-test-tools.sh, which `make check` runs.
# Safe to run again: every step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/apt.sh

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
apt_install "${need_apt[@]}"

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
# One stamp per pyproject.toml content and extra: the test tools' "dev" stamp
# also satisfies this script, so it never reinstalls a smaller set over it.
hash=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f ".venv/.installed-runtime-$hash" ] && [ ! -f ".venv/.installed-dev-$hash" ]; then
  echo "== pip install -e ."
  .venv/bin/python -m pip install -q --upgrade pip
  # --no-compile: byte-compiling every file of every dependency was over
  # half of pip's time here; imports write the .pyc files of what they use.
  .venv/bin/python -m pip install -q --no-compile -e .
  find .venv -maxdepth 1 -name '.installed-*' ! -name "*-$hash" -delete
  touch ".venv/.installed-runtime-$hash"
fi

echo "== Kafka jars (cached in ${HEATMAP_CACHE_DIR:-$HOME/.cache/heatmap})"
.venv/bin/python - <<'PY'
import time
from heatmap_devtools.localinfra.kafka import ensure_jars
t = time.monotonic(); print("kafka jars:", ensure_jars(), f"({time.monotonic() - t:.0f}s)")
PY
