# Leeway developer commands. `make serve` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GEN_DIR := clients/python/src
TS_DIR := clients/typescript
NODE_STAMP := $(TS_DIR)/node_modules/.installed
PROTOS := $(wildcard protos/leeway/v1/*.proto)

.PHONY: setup serve test test-python test-typescript proto lint-proto bench bench-http bench-projections bench-scale bench-log-bytes bench-audit bench-tracing observability chaos image container-test clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e clients/python -e '.[dev]'
	touch $(STAMP)

$(NODE_STAMP): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

setup: $(STAMP) $(NODE_STAMP) ## Create .venv (service, Python client, dev tools) and the TypeScript client's node_modules

serve: $(STAMP) ## Serve on the embedded default (SQLite under ./var/) at $$LEEWAY_GRPC_ADDRESS (127.0.0.1:50051)
	$(BIN)/leeway serve

test: test-python test-typescript ## Run every test (Python: unit, integration on SQLite + PostgreSQL, e2e, contract; TypeScript client against a live server)

test-python: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest

test-typescript: $(STAMP) $(NODE_STAMP)
	cd $(TS_DIR) && LEEWAY_PYTHON=$(abspath $(BIN))/python npm test

proto: $(STAMP) $(NODE_STAMP) ## Regenerate both clients from protos/: Python stubs (+ .pyi), TypeScript (protoc-gen-es) and the Connect (HTTP/JSON) stubs
	$(BIN)/buf generate --template $(TS_DIR)/buf.gen.yaml
	$(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=$(GEN_DIR) --pyi_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=quiet:$(GEN_DIR) \
	  $(PROTOS)
	# Connect stubs (protoc-gen-connectrpc, the generator matching the connectrpc runtime) for google.protobuf
	# messages, beside their _pb2 modules in leeway.v1 (which they import relatively): the server's HTTP/JSON front
	# serves their ASGI applications, and a Python caller may use their Connect clients (leeway-client[connect]).
	rm -f $(GEN_DIR)/leeway/v1/*_connect.py
	$(BIN)/python -m grpc_tools.protoc -I protos \
	  --plugin=protoc-gen-connectrpc=$(BIN)/protoc-gen-connectrpc \
	  --connectrpc_opt=protobuf=google,io=async --connectrpc_out=$(GEN_DIR) \
	  $(PROTOS)

lint-proto: $(STAMP) ## buf lint (STANDARD + COMMENTS) and buf breaking (FILE) against the published contract
	$(BIN)/buf lint
	$(BIN)/python -m pytest -q tests/contract -k "buf"

bench: $(STAMP) ## Throughput benchmark (PostgreSQL + SQLite): prints RecordAction/s vs the transport ceiling, GetBudget on a long history, RSS
	$(BIN)/python scripts/bench.py

bench-http: $(STAMP) ## GetBudget over HTTP/JSON (Connect) vs gRPC, 8 in flight, side by side: calls/s, median latency, server CPU per call
	$(BIN)/python scripts/bench_http.py

bench-projections: $(STAMP) ## Projection benchmark (PostgreSQL + SQLite): events/s of a full rebuild and of StreamEvents vs raw read + decode
	$(BIN)/python scripts/bench_projections.py

bench-tracing: $(STAMP) ## What OpenTelemetry tracing costs: RecordAction/s and CPU per call before tracing, with it off, and on (paired rounds)
	$(BIN)/python scripts/bench_tracing.py

observability: $(STAMP) ## Regenerate deploy/observability (Grafana dashboard, alert rules, PrometheusRule) from generate.py, then check them with promtool
	$(BIN)/python deploy/observability/generate.py
	cd deploy/observability && promtool check rules alerts.rules.yaml && promtool test rules alerts.test.yaml

SIZES ?= 10000,100000
bench-scale: $(STAMP) ## Scale benchmark (PostgreSQL): seeds SIZES actions through the write path, times every read RPC and the auditor paths at each size, prints growth ratios
	$(BIN)/python scripts/bench_scale.py --sizes $(SIZES)

bench-log-bytes: $(STAMP) ## Bytes the log stores per event and per action (SQLite, PostgreSQL; with and without a key store), and the writer's CPU per action packed vs in the JSON form
	$(BIN)/python scripts/log_bytes.py

bench-audit: $(STAMP) ## Auditor benchmark (PostgreSQL): peak RSS and events/s of leeway export / verify (JSON lines, Parquet) VerifyIntegrity full vs incremental, VerifyIntegrity of one budget and export --after the verified checkpoint (each next to the whole-log pass it replaced), at 10k and 100k actions
	$(BIN)/python scripts/bench_audit.py

chaos: $(STAMP) ## Fault scenarios at full size (SIGKILL under load, database outage, two replicas, holds, slow-loris) + ~10,000 fuzz cases; prints a table (needs the local PostgreSQL)
	$(BIN)/python scripts/chaos.py

image: ## Build the container image leeway:latest (from the package index; see Dockerfile for offline builds)
	docker build --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) -t leeway:latest .

container-test: $(STAMP) ## Build the image for real (offline wheelhouse) and run it against PostgreSQL (needs root for docker)
	IMAGE=leeway:ci scripts/container-test.sh

clean:
	rm -rf $(VENV) build dist .pytest_cache $(TS_DIR)/node_modules $(TS_DIR)/dist
