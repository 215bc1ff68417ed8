#!/usr/bin/env bash
# Builds the Java client offline with plain javac against Debian's grpc-java 1.41 and
# protobuf-java 3.21 (clients/ci-setup.sh installs them): code generation from ../../protos,
# the library jar build/assay-client-$VERSION.jar (+ its POM), then the tests and the example.
#   bash build.sh            build
#   bash build.sh install    install the built jar and POM (building them first if missing) into
#                            a Maven-layout repository ($ASSAY_MAVEN_REPO, default ~/.m2/repository)
set -euo pipefail
cd "$(dirname "$0")"
VERSION=0.1.0
JAR=build/assay-client-$VERSION.jar
if [[ "${1:-}" == "install" ]]; then
  [[ -f "$JAR" ]] || bash "$0"
  repo=${ASSAY_MAVEN_REPO:-$HOME/.m2/repository}
  dest="$repo/dev/assay/assay-client/$VERSION"
  mkdir -p "$dest"
  cp "$JAR" "build/assay-client-$VERSION.pom" "$dest/"
  echo "installed dev.assay:assay-client:$VERSION into $repo"
  exit 0
fi
J=${JAVA_LIBS:-/usr/share/java}
# Runtime dependencies of the jar (with Maven coordinates in pom.xml.in).
DEPS=(grpc-api grpc-context grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite grpc-stub
      protobuf guava gson perfmark-api
      netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-common netty-handler
      netty-resolver netty-transport)
CP=""
for d in "${DEPS[@]}"; do
  [[ -f "$J/$d.jar" ]] || { echo "missing $J/$d.jar: run clients/ci-setup.sh" >&2; exit 1; }
  CP="$CP${CP:+:}$J/$d.jar"
done
# TLS: Debian's netty is built without the JDK's ALPN, which gRPC needs over TLS, so TLS goes
# through OpenSSL (netty-tcnative). Netty loads the native library from the classpath, at the
# path the upstream netty-tcnative jars use: build/netty-tcnative-native.jar holds Debian's.
TCN_SO=$(ls /usr/lib/*/jni/libnetty-tcnative.so 2>/dev/null | head -1 || true)
[[ -n "$TCN_SO" && -f "$J/netty-tcnative.jar" ]] || { echo "missing netty-tcnative (libnetty-tcnative-java, libnetty-tcnative-jni): run clients/ci-setup.sh" >&2; exit 1; }
CP="$CP:$J/netty-tcnative.jar:$PWD/build/netty-tcnative-native.jar"
# Generated stubs carry @javax.annotation.Generated, grpc-java errorprone annotations: needed
# to compile against them, not to run.
COMPILE_CP="$CP:$J/geronimo-annotation-1.3-spec.jar:$J/error_prone_annotations.jar"

rm -rf build
mkdir -p build/gen build/rpc-protos/google/rpc build/classes build/test-classes build/example-classes
protoc -I ../../protos --java_out=build/gen --grpc-java_out=build/gen \
  --plugin=protoc-gen-grpc-java="$(command -v grpc_java_plugin)" ../../protos/assay/v1/*.proto
# google.rpc's Status, ErrorInfo, BadRequest and RetryInfo decode the rich error status. They
# are generated under the client's own package so that they cannot clash with a program's copy
# of com.google.rpc (proto-google-common-protos), whatever its version.
for f in status error_details; do
  sed 's/^option java_package = "com.google.rpc";/option java_package = "dev.assay.client.rpc";/' \
    "../../protos/third_party/google/rpc/$f.proto" > "build/rpc-protos/google/rpc/$f.proto"
done
protoc -I build/rpc-protos --java_out=build/gen build/rpc-protos/google/rpc/*.proto

arch=$(uname -m); [[ $arch == aarch64 ]] && arch=aarch_64
mkdir -p build/native/META-INF/native
cp "$TCN_SO" "build/native/META-INF/native/libnetty_tcnative_linux_$arch.so"
jar --create --file build/netty-tcnative-native.jar -C build/native META-INF

JAVAC=(javac --release 17 -encoding UTF-8 -Xlint:all,-serial,-processing,-options -Werror)
# Generated code gets no -Xlint/-Werror (its warnings are protoc's).
javac --release 17 -encoding UTF-8 -nowarn -d build/classes -cp "$COMPILE_CP" \
  $(find build/gen -name '*.java')
"${JAVAC[@]}" -d build/classes -cp "$COMPILE_CP:build/classes" $(find src/main/java -name '*.java')
mkdir -p build/classes/dev/assay/client
cp ../../protos/assay/v1/service_config.json build/classes/dev/assay/client/service_config.json
jar --create --file "$JAR" -C build/classes .
sed "s/@VERSION@/$VERSION/" pom.xml.in > "build/assay-client-$VERSION.pom"
# The runtime classpath of programs using the jar, for the tests, the example and consumers.
echo "$CP" > build/classpath.txt

"${JAVAC[@]}" -d build/test-classes -cp "$CP:$JAR:$COMPILE_CP" $(find src/test/java -name '*.java')
"${JAVAC[@]}" -d build/example-classes -cp "$CP:$JAR" $(find examples -name '*.java')
echo "java client built: $JAR"

