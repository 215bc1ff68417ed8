#!/usr/bin/env bash
# Builds the Go client offline: code generation from ../../protos, a vendor tree from
# Debian's Go sources, then build and vet. Needs golang-go, protobuf-compiler,
# protoc-gen-go, protoc-gen-go-grpc and the golang-google-grpc-dev family (clients/ci-setup.sh).
set -euo pipefail
cd "$(dirname "$0")"
export GOPROXY=off GOFLAGS=-mod=vendor GOTOOLCHAIN=local
# The build cache lives under $HOME; give it a place where HOME is not set.
[[ -n "${HOME:-}${GOCACHE:-}" ]] || export GOCACHE=/tmp/assay-go-cache
rm -rf gen
mkdir -p gen bin
protoc -I ../../protos -I /usr/include \
  --go_out=. --go_opt=module=assay \
  --go-grpc_out=. --go-grpc_opt=module=assay \
  ../../protos/assay/v1/*.proto
# go.mod's require block is rewritten from what the code imports.
printf 'module assay\n\ngo 1.19\n' > go.mod
python3 tools/vendor_from_debian.py
go build -o bin/ ./cmd/...
go vet ./...
go test -c -o bin/assay.test .
echo "go client built: bin/"
