#!/usr/bin/env bash
# Builds the image for real and runs it against the local PostgreSQL (a separate CI step: `make container-test`).
#
# 1. a Docker engine (installs docker.io and starts dockerd if none answers; CI machines have no registry);
# 2. a base image: $BASE_IMAGE, else python:3.11-slim if it can be pulled, else one built with debootstrap
#    (Debian bookworm, python3 3.11) and imported (see ../shared/container.md);
# 3. an offline wheelhouse in build/wheels (the project's wheels and every dependency for the image's platform);
# 4. docker build, then: run against PostgreSQL, wait for Docker's HEALTHCHECK to say healthy, record and
#    read an action through the published port with the Python client, read it again with one JSON POST
#    through the published HTTP/JSON port (Connect protocol), scrape /metrics, SIGTERM, check the
#    exit code is 0 within the grace period and the action is still there after a restart;
# 5. mutual TLS: the same image with LEEWAY_TLS_* and LEEWAY_HEALTH_* must turn healthy (its HEALTHCHECK checks
#    over mutual TLS), answer `leeway health` from the host with a client certificate, and refuse one without.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
IMAGE=${IMAGE:-leeway:ci}
PG_URL=${LEEWAY_TEST_POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test}
GRACE=5
log() { printf '\n==> %s\n' "$*"; }

cleanup() {
  set +e
  [ -n "${CONTAINER:-}" ] && docker rm -f "$CONTAINER" >/dev/null 2>&1
  [ -n "${SCHEMA:-}" ] && psql "$PG_URL" -qc "DROP SCHEMA IF EXISTS \"$SCHEMA\" CASCADE" >/dev/null 2>&1
  [ -n "${FORWARDER:-}" ] && kill "$FORWARDER" 2>/dev/null
  [ -n "${DOCKERD:-}" ] && kill "$DOCKERD" 2>/dev/null
}
trap cleanup EXIT

# ---------------------------------------------------------------------------- 1. engine
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 || ! command -v socat >/dev/null 2>&1; then
    log "installing docker.io, debootstrap and socat"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap socat >/dev/null
  fi
  log "starting dockerd"
  dockerd --data-root /var/lib/docker >/tmp/leeway-dockerd.log 2>&1 &
  DOCKERD=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null
fi
command -v socat >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat >/dev/null; }

# ---------------------------------------------------------------------------- 2. base image
if [ -z "${BASE_IMAGE:-}" ]; then
  if timeout 30 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE_IMAGE=python:3.11-slim
  else
    BASE_IMAGE=localhost/leeway-base:bookworm
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
      command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
      ROOTFS=${ROOTFS:-/var/tmp/leeway-rootfs}
      if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
        log "no registry: building a Debian bookworm base with debootstrap (python3 3.11)"
        rm -rf "$ROOTFS"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" >/tmp/leeway-debootstrap.log
      fi
      tar -C "$ROOTFS" -c . | docker import -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    fi
  fi
fi
log "base image: $BASE_IMAGE"

# ---------------------------------------------------------------------------- 3. wheelhouse
log "wheelhouse in build/wheels"
rm -rf build/wheels && mkdir -p build/wheels
"$PYTHON" -m pip wheel -q --no-deps -w build/wheels . ./clients/python
arch=$(uname -m)
"$PYTHON" -m pip download -q --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
  --platform "manylinux2014_$arch" --platform "manylinux_2_28_$arch" --platform "manylinux_2_34_$arch" --platform any \
  --find-links build/wheels -d build/wheels build/wheels/leeway-*.whl build/wheels/leeway_client-*.whl

# ---------------------------------------------------------------------------- 4. build, run, check
log "docker build $IMAGE"
docker build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  -t "$IMAGE" . >/dev/null
docker image ls "$IMAGE" --format 'image {{.Repository}}:{{.Tag}} {{.Size}}'
docker run --rm --entrypoint /bin/sh "$IMAGE" -c 'test "$(id -u)" = 10001 && ! command -v gcc && ! command -v cc' \
  || { echo "the image must run as uid 10001 and carry no compiler"; exit 1; }

SCHEMA="container_$(date +%s)_$$"
psql "$PG_URL" -qc "CREATE SCHEMA \"$SCHEMA\""
GATEWAY=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
[ -n "$GATEWAY" ] || GATEWAY=$(ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1)
[ -n "$GATEWAY" ] || { echo "cannot find the docker bridge gateway address"; exit 1; }
# PostgreSQL listens on 127.0.0.1 only: forward the bridge gateway's 5432 to it for the container.
socat "TCP-LISTEN:5432,bind=$GATEWAY,reuseaddr,fork" TCP:127.0.0.1:5432 &
FORWARDER=$!
PG_IN_CONTAINER=$("$PYTHON" -c "import sys,urllib.parse as u; p=u.urlsplit(sys.argv[1]); print(p._replace(netloc=p.netloc.replace(p.hostname,'host.docker.internal')).geturl())" "$PG_URL")
case "$PG_IN_CONTAINER" in *\?*) PG_IN_CONTAINER="$PG_IN_CONTAINER&schema=$SCHEMA" ;; *) PG_IN_CONTAINER="$PG_IN_CONTAINER?schema=$SCHEMA" ;; esac

# Security is on in the image: an API key for the smoke client (admin to open a budget, crm to record).
KEY_LINES=$("$PYTHON" -m leeway.cli api-key container-ci admin+crm+auditor)
API_KEY=$(echo "$KEY_LINES" | sed -n 's/^key (give it to the client, shown only now): //p')
API_KEY_ENTRY=$(echo "$KEY_LINES" | sed -n 's/^LEEWAY_API_KEYS entry (for the server): //p')
export LEEWAY_SMOKE_API_KEY="$API_KEY"

run_container() {  # extra `docker run` options as arguments
  CONTAINER=$(docker run -d --add-host "host.docker.internal:$GATEWAY" -e "LEEWAY_API_KEYS=$API_KEY_ENTRY" \
    -p 127.0.0.1::50051 -p 127.0.0.1::8080 -p 127.0.0.1::9464 -e LEEWAY_METRICS_ADDRESS=0.0.0.0:9464 \
    --read-only --tmpfs /tmp \
    -e "LEEWAY_DATABASE_URL=$PG_IN_CONTAINER" -e "LEEWAY_SHUTDOWN_GRACE_SECONDS=$GRACE" \
    --health-interval 1s --health-start-period 30s "$@" "$IMAGE")
  for _ in $(seq 90); do
    status=$(docker inspect --format '{{.State.Health.Status}}' "$CONTAINER")
    [ "$status" = healthy ] && break
    [ "$(docker inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] || { docker logs "$CONTAINER"; exit 1; }
    sleep 1
  done
  [ "$status" = healthy ] || { echo "container not healthy: $status"; docker logs "$CONTAINER"; exit 1; }
  GRPC_PORT=$(docker port "$CONTAINER" 50051/tcp | head -1 | sed 's/.*://')
  HTTP_PORT=$(docker port "$CONTAINER" 8080/tcp | head -1 | sed 's/.*://')
  METRICS_PORT=$(docker port "$CONTAINER" 9464/tcp | head -1 | sed 's/.*://')
  export LEEWAY_SMOKE_HTTP_URL="http://127.0.0.1:$HTTP_PORT"
  log "container $CONTAINER healthy; gRPC on 127.0.0.1:$GRPC_PORT, HTTP on 127.0.0.1:$HTTP_PORT, metrics on 127.0.0.1:$METRICS_PORT"
}

stop_container() {
  local started took code
  started=$(date +%s%N)
  docker stop --time $((GRACE + 10)) "$CONTAINER" >/dev/null
  took=$(( ($(date +%s%N) - started) / 1000000 ))
  code=$(docker inspect --format '{{.State.ExitCode}}' "$CONTAINER")
  docker logs "$CONTAINER" 2>&1 | tail -3
  echo "stopped in ${took} ms with exit code $code (grace ${GRACE} s)"
  [ "$code" = 0 ] || { echo "exit code $code"; exit 1; }
  [ "$took" -lt $(( (GRACE + 3) * 1000 )) ] || { echo "shutdown took ${took} ms"; exit 1; }
  docker logs "$CONTAINER" 2>&1 | grep -q '"shutdown.done"'
  docker rm "$CONTAINER" >/dev/null
  CONTAINER=
}

log "run against PostgreSQL (schema $SCHEMA)"
run_container
"$PYTHON" scripts/container_smoke.py record "127.0.0.1:$GRPC_PORT" "http://127.0.0.1:$METRICS_PORT/metrics" build/container-action
stop_container
log "restart: the action is still there"
run_container
"$PYTHON" scripts/container_smoke.py check "127.0.0.1:$GRPC_PORT" "http://127.0.0.1:$METRICS_PORT/metrics" build/container-action
stop_container

log "mutual TLS: Docker's HEALTHCHECK checks the server over mutual TLS (LEEWAY_HEALTH_*)"
TLS_DIR=$(mktemp -d)
"$PYTHON" -m leeway.cli dev-certs "$TLS_DIR/certs" >/dev/null
# CI-only keys, read by the container's uid 10001.
chmod 755 "$TLS_DIR" "$TLS_DIR/certs" && chmod 644 "$TLS_DIR"/certs/*.pem
run_container -v "$TLS_DIR/certs:/tls:ro" \
  -e LEEWAY_TLS_CERT_FILE=/tls/server.pem -e LEEWAY_TLS_KEY_FILE=/tls/server-key.pem -e LEEWAY_TLS_CLIENT_CA_FILE=/tls/ca.pem \
  -e LEEWAY_HEALTH_CA_FILE=/tls/ca.pem -e LEEWAY_HEALTH_CERT_FILE=/tls/client.pem -e LEEWAY_HEALTH_KEY_FILE=/tls/client-key.pem
"$PYTHON" -m leeway.cli health --address "127.0.0.1:$GRPC_PORT" --ca-file "$TLS_DIR/certs/ca.pem" \
  --cert-file "$TLS_DIR/certs/client.pem" --key-file "$TLS_DIR/certs/client-key.pem"
if docker exec -e LEEWAY_HEALTH_CERT_FILE= -e LEEWAY_HEALTH_KEY_FILE= "$CONTAINER" leeway health --timeout 4 2>"$TLS_DIR/refused"; then
  echo "a health check without a client certificate passed against a mutual-TLS server"; exit 1
fi
grep -q "LEEWAY_HEALTH_CERT_FILE" "$TLS_DIR/refused" || { cat "$TLS_DIR/refused"; exit 1; }
stop_container
rm -rf "$TLS_DIR"
log "container test passed"
