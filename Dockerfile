# Leeway as a container: `leeway serve` on 0.0.0.0:50051 (gRPC) and 0.0.0.0:8080 (HTTP/JSON, the Connect protocol:
# README, "HTTP/JSON (Connect)"; LEEWAY_HTTP_ADDRESS=off turns it off). Prometheus /metrics has no authentication, so
# it stays on the container's loopback (127.0.0.1:9464, the default: unreachable from outside) unless you say
# where to serve it: -e LEEWAY_METRICS_ADDRESS=0.0.0.0:9464, and then publish it only where your Prometheus
# is (README, "Deploying"). Configuration only through LEEWAY_* environment variables (README,
# "Configuration"). Security is on: give it LEEWAY_API_KEYS and/or LEEWAY_JWT_* (README, "Security"), or it
# refuses to start.
#
#   docker build -t leeway:latest .
#   docker run --rm -p 50051:50051 -p 8080:8080 -e LEEWAY_DATABASE_URL=postgresql://... leeway:latest
#   # with metrics for a Prometheus on this host only:
#   docker run --rm -p 50051:50051 -p 127.0.0.1:9464:9464 -e LEEWAY_METRICS_ADDRESS=0.0.0.0:9464 ... leeway:latest
#
# Offline builds: put every wheel needed in build/wheels (scripts/container-test.sh shows how) and the
# build installs from there with --no-index; otherwise it installs from the package index.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------- build: a venv with Leeway
FROM ${BASE_IMAGE} AS build
SHELL ["/bin/sh", "-eu", "-c"]
WORKDIR /src
# `build*` copies the contents of build/ (so build/wheels lands in ./wheels) if it exists, and nothing if not.
COPY pyproject.toml README.md build* ./
COPY service/ service/
COPY clients/python/ clients/python/
RUN python3 -m venv /opt/venv \
 && if [ -d wheels ] && [ -n "$(find wheels -name 'leeway-*.whl')" ]; then \
      /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=wheels leeway; \
    else \
      /opt/venv/bin/pip install --no-cache-dir ./clients/python . ; \
    fi \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true \
 && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} + \
 && /opt/venv/bin/leeway --version

# ---------------------------------------------------------------------------- runtime: no build tools
FROM ${BASE_IMAGE}
# The source revision built (`make image` passes `git rev-parse HEAD`): leeway_build_info{revision} on /metrics.
ARG REVISION=unknown
LABEL org.opencontainers.image.title="leeway" \
      org.opencontainers.image.description="Empowered customer service: event-sourced budgets over gRPC" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /opt/venv /opt/venv
# A non-root user (numeric, so it needs no /etc/passwd entry); /data holds the SQLite file when no
# PostgreSQL URL is given. Everything else may be read-only.
RUN mkdir -p /data && chown 10001:10001 /data
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/data \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LEEWAY_GRPC_ADDRESS=0.0.0.0:50051 \
    LEEWAY_HTTP_ADDRESS=0.0.0.0:8080 \
    LEEWAY_DATABASE_URL=sqlite:////data/leeway.sqlite \
    LEEWAY_LOG_FORMAT=json \
    LEEWAY_AUTH=required \
    LEEWAY_BUILD_REVISION=${REVISION}
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# gRPC and HTTP/JSON: /metrics is not served outside the container unless LEEWAY_METRICS_ADDRESS says so.
EXPOSE 50051 8080
# A real gRPC health check (grpc.health.v1), not a port probe: healthy only while the event store answers. It
# follows the server's TLS settings: with LEEWAY_TLS_CERT_FILE it checks over TLS, trusting LEEWAY_HEALTH_CA_FILE
# (else a self-signed root in the certificate file, else the system's CAs); with LEEWAY_TLS_CLIENT_CA_FILE (mutual
# TLS) give it a client certificate too: LEEWAY_HEALTH_CERT_FILE and LEEWAY_HEALTH_KEY_FILE (README, "Health
# checks over TLS").
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["leeway", "health", "--timeout", "4"]
# `leeway serve` handles SIGTERM itself (graceful shutdown: NOT_SERVING, then in-flight calls finish within
# LEEWAY_SHUTDOWN_GRACE_SECONDS). Running it as PID 1 is fine; `docker run --init` adds tini if wanted.
STOPSIGNAL SIGTERM
ENTRYPOINT ["leeway"]
CMD ["serve"]
