#!/usr/bin/env bash
# Installs the toolchains of the C++, Go, TypeScript and Java clients from Debian and npm
# (idempotent: only missing packages are installed) and builds all four clients, with
# their code generated from protos/. tests/clients then runs each one's own test runner
# against a live server.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive

APT_PACKAGES=(
  # C++: gRPC, protobuf, CMake; nlohmann-json for the conformance test's vector reader
  g++ make cmake pkg-config protobuf-compiler libprotobuf-dev libgrpc++-dev
  protobuf-compiler-grpc nlohmann-json3-dev
  # Go: toolchain, Debian's Go sources of grpc-go/protobuf (vendored offline), protoc plugins.
  # golang-github-golang-protobuf-1-5-dev is named because apt would pick the old 1-3.
  golang-go golang-google-grpc-dev golang-google-protobuf-dev
  golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc
  # Java: JDK 17, Debian's grpc-java 1.41 / protobuf-java 3.21 jars and the protoc plugin
  # (clients/java/build.sh compiles with plain javac; no Maven Central). libnetty-java and
  # libperfmark-java are named because libgrpc-java does not depend on them.
  openjdk-17-jdk-headless libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java
  libnetty-java libperfmark-java libguava-java libgoogle-gson-java
  libgeronimo-annotation-1.3-spec-java liberror-prone-java
  # Java over TLS: Debian's netty has no JDK ALPN, so TLS runs on OpenSSL (netty-tcnative)
  libnetty-tcnative-java libnetty-tcnative-jni
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"
if ((${#missing[@]})); then
  echo "apt: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

start=$SECONDS
echo "== C++ client"
cmake -S cpp -B cpp/build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build cpp/build -j "$(nproc)"

echo "== Go client"
bash go/build.sh

echo "== TypeScript client"
(cd node && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)

echo "== Java client"
bash java/build.sh
echo "clients built in $((SECONDS - start)) s"
