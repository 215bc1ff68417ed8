#!/usr/bin/env bash
# Regenerates the Python code of the contract from protos/assay/v1/*.proto into the client
# distribution (clients/python/gen/assay/v1: the package `assay.v1` of assay-client).
# Also regenerates docs/errors.md, the page of the ErrorReason enum (docs/gen_errors.py).
# And copies the service config (assay/v1/service_config.json) into each client
# (gen_service_config.py), so that every package ships the same retry policy.
# With --check, fails if the committed output differs from a fresh generation.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../clients/python/gen"
target="$out"
if [[ "${1:-}" == "--check" ]]; then
  target="$(mktemp -d)"
fi
mkdir -p "$target/assay/v1"
python -m grpc_tools.protoc -I "$here" \
  --python_out="$target" --pyi_out="$target" --grpc_python_out="$target" \
  "$here"/assay/v1/*.proto
touch "$target/assay/v1/__init__.py"
if [[ "${1:-}" == "--check" ]]; then
  if ! diff -r -x __init__.py -x __pycache__ -x service_config.json "$target/assay/v1" "$out/assay/v1"; then
    echo "generated code is stale: run protos/generate.sh" >&2
    exit 1
  fi
  echo "generated code matches protos/"
  python "$here/../docs/gen_errors.py" --check
  python "$here/gen_service_config.py" --check
else
  python "$here/../docs/gen_errors.py"
  python "$here/gen_service_config.py"
fi
