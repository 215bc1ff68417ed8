#!/usr/bin/env bash
# Build the CPU image and test it as a container: read-only root filesystem, all
# capabilities dropped, a token required; the image's own HEALTHCHECK must turn healthy,
# deploy/container_smoke.py must pass from a second container in the same network
# namespace, and `docker stop` (SIGTERM) must end the server with exit code 0.
# Needs a Docker daemon; deploy/ci-setup.sh calls it only when one answers.
set -euo pipefail
cd "$(dirname "$0")/.."
image=assay:ci-cpu
name=assay-ci-$$
work=$(mktemp -d)
cleanup() {
  docker rm -f "$name" > /dev/null 2>&1 || true
  docker volume rm "$name-data" > /dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "-- docker build --target cpu"
timeout 1500 docker build --target cpu -t "$image" .

python3 -c 'import secrets; print(secrets.token_hex(32))' > "$work/token"
chmod 0644 "$work/token"
docker volume create "$name-data" > /dev/null
docker run -d --name "$name" --read-only --tmpfs /tmp:rw,size=512m --cap-drop ALL \
  --security-opt no-new-privileges -v "$name-data:/data" \
  -v "$work/token:/run/secrets/assay-token:ro" "$image" \
  --auth-token-file /run/secrets/assay-token > /dev/null

for _ in $(seq 120); do
  state=$(docker inspect -f '{{.State.Health.Status}}' "$name")
  [[ $state == healthy || $state == unhealthy ]] && break
  sleep 1
done
if [[ $state != healthy ]]; then
  docker logs "$name"
  echo "the container did not turn healthy (state: $state)" >&2
  exit 1
fi

docker run --rm --network "container:$name" --read-only --tmpfs /tmp --cap-drop ALL \
  -v "$PWD/deploy/container_smoke.py:/smoke/container_smoke.py:ro" \
  -v "$work/token:/run/secrets/assay-token:ro" --entrypoint python "$image" \
  /smoke/container_smoke.py 127.0.0.1:50051 127.0.0.1:50052 /run/secrets/assay-token

docker stop -t 30 "$name" > /dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
if [[ $code != 0 ]]; then
  docker logs "$name"
  echo "the server exited with $code after SIGTERM" >&2
  exit 1
fi
echo "container tests passed"
