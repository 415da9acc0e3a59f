# Leeway developer commands. `make serve` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GEN_DIR := clients/python/src
PROTOS := $(wildcard protos/leeway/v1/*.proto)

.PHONY: setup serve test test-fast proto proto-check lint-proto image container-test clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e clients/python -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## Create .venv with the service, the client and the dev tools

serve: $(STAMP) ## Serve on the embedded default (SQLite under ./var/) at $$LEEWAY_GRPC_ADDRESS (127.0.0.1:50051)
	$(BIN)/leeway serve

test: $(STAMP) ## Run every test (unit, integration on SQLite + PostgreSQL, e2e, contract)
	$(BIN)/python -m pytest

proto: $(STAMP) ## Regenerate the Python stubs (+ .pyi) from protos/
	$(BIN)/python -m grpc_tools.protoc -I protos \
	  --python_out=$(GEN_DIR) --pyi_out=$(GEN_DIR) --grpc_python_out=$(GEN_DIR) \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=quiet:$(GEN_DIR) \
	  $(PROTOS)

lint-proto: $(STAMP) ## buf lint (STANDARD + COMMENTS) on protos/
	$(BIN)/buf lint

image: ## Build the container image leeway:latest (from the package index; see Dockerfile for offline builds)
	docker build -t leeway:latest .

container-test: $(STAMP) ## Build the image for real (offline wheelhouse) and run it against PostgreSQL (needs root for docker)
	IMAGE=leeway:ci scripts/container-test.sh

clean:
	rm -rf $(VENV) build dist .pytest_cache
