#!/usr/bin/env bash
# A project of its own that uses the Assay Java client as a package: it compiles against the
# installed jar (dev.assay:assay-client, installed by `bash ../build.sh install` into a
# Maven-layout repository, $ASSAY_MAVEN_REPO or ~/.m2/repository) and the dependencies its POM
# names, taken here from Debian's /usr/share/java. Nothing of the client's source tree is used.
#   bash build.sh          build build/consumer.jar
#   bash build.sh run      build, then run it against $ASSAY_TARGET
set -euo pipefail
cd "$(dirname "$0")"
VERSION=0.1.0
repo=${ASSAY_MAVEN_REPO:-$HOME/.m2/repository}
JAR="$repo/dev/assay/assay-client/$VERSION/assay-client-$VERSION.jar"
POM="${JAR%.jar}.pom"
[[ -f "$JAR" && -f "$POM" ]] || { echo "dev.assay:assay-client:$VERSION is not installed in $repo: run bash ../build.sh install" >&2; exit 1; }
# The POM's dependencies (artifactIds) as Debian jar names.
J=${JAVA_LIBS:-/usr/share/java}
CP="$JAR"
for a in $(sed -n 's|.*<artifactId>\([^<]*\)</artifactId>.*|\1|p' "$POM" | tail -n +2); do
  case "$a" in protobuf-java) a=protobuf ;; esac
  CP="$CP:$J/$a.jar"
done
# What grpc-java's own POMs would bring along transitively.
for a in grpc-context grpc-protobuf-lite perfmark-api netty-buffer netty-codec netty-codec-http \
         netty-codec-http2 netty-common netty-handler netty-resolver netty-transport; do
  CP="$CP:$J/$a.jar"
done
rm -rf build && mkdir -p build/classes
javac --release 17 -Xlint:all -Werror -d build/classes -cp "$CP" $(find src -name '*.java')
jar --create --file build/consumer.jar --main-class com.example.consumer.Main -C build/classes .
echo "$CP" > build/classpath.txt
echo "consumer built: build/consumer.jar"
if [[ "${1:-}" == "run" ]]; then
  java -cp "build/consumer.jar:$CP" com.example.consumer.Main "${ASSAY_TARGET:-127.0.0.1:50051}"
fi
