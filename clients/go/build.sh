#!/usr/bin/env bash
# Builds the Go client offline: code generation from ../../protos, vendor trees (the client's
# and its consumer's) from Debian's Go sources, then build, vet and the test binary. Needs
# golang-go, protobuf-compiler, protoc-gen-go, protoc-gen-go-grpc and the golang-google-grpc-dev
# family (clients/ci-setup.sh).
#
# go.mod is never written here: it names the module and the upstream versions a networked
# build resolves. Vendoring is this offline build's own detail: vendor/ (git-ignored) holds
# Debian's sources of those modules, and GOFLAGS=-mod=vendor builds from it alone.
set -euo pipefail
cd "$(dirname "$0")"
export GOPROXY=off GOFLAGS=-mod=vendor GOTOOLCHAIN=local
# The build cache lives under $HOME; give it a place where HOME is not set.
[[ -n "${HOME:-}${GOCACHE:-}" ]] || export GOCACHE=/tmp/assay-go-cache
module=$(sed -n 's/^module[[:space:]]*//p' go.mod)
# gen/assayv1 is committed (a module is fetched as it is in the repository, without protoc);
# it is regenerated here from the contract. The protos' own go_package is overridden (M
# options) with this module's import path.
protos=(../../protos/assay/v1/*.proto)
map=()
for p in "${protos[@]}"; do map+=("M${p#../../protos/}=$module/gen/assayv1;assayv1"); done
opts=$(IFS=,; echo "module=$module,${map[*]}")
rm -rf gen/assayv1
mkdir -p gen bin
protoc -I ../../protos -I /usr/include \
  --go_out=. --go_opt="$opts" --go-grpc_out=. --go-grpc_opt="$opts" "${protos[@]}"
python3 tools/vendor_from_debian.py .
go build -o bin/ ./cmd/...
go vet ./...
go test -c -o bin/assay.test .
# consumer/: a project of its own requiring this module by its path (replaced by ../), as a
# user's project does; vendored the same way.
python3 tools/vendor_from_debian.py consumer
(cd consumer && go build -o ../bin/consumer . && go vet .)
echo "go client built: bin/"
