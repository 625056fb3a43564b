# trackflow: every developer and CI use these targets. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help deps stack demo test test-unit lint fmt bench chaos chaos-long stop clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@$(PY) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

deps: $(VENV)/.installed ## install everything: the venv, Kafka jars, redis-server, browser bits
	@bash scripts/install-kafka.sh
	@bash scripts/install-redis.sh
	@bash scripts/install-dashboard.sh

stack: deps ## start the local stack (Kafka, Redis, embedded ClickHouse) and create topics
	$(BIN)/trackflow stack up
	$(BIN)/trackflow stack status

demo: deps ## run the whole pipeline on the embedded default with realistic traffic
	$(BIN)/trackflow demo

test: deps ## run every test (unit, integration, e2e, short chaos) against real services
	$(BIN)/trackflow stack up
	$(BIN)/pytest -q tests

test-unit: $(VENV)/.installed ## pure-logic tests only, no services
	$(BIN)/pytest -q tests/unit

lint: $(VENV)/.installed ## ruff and mypy
	$(BIN)/ruff check .
	$(BIN)/mypy

fmt: $(VENV)/.installed ## format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: deps ## run the benchmarks in bench/ and print their figures
	$(BIN)/trackflow stack up
	@set -e; for b in bench/*/run.py bench/sink/lookup.py bench/pipeline/busy_device.py; do echo "== $$b"; $(BIN)/python $$b; done

chaos: deps ## the long fault-injection run (the short one is part of make test)
	$(BIN)/trackflow stack up
	TRACKFLOW_CHAOS_EVENTS=$${TRACKFLOW_CHAOS_EVENTS:-1000000} $(BIN)/pytest -q -m chaos tests/chaos

stop: ## stop the demo services and the local stack
	-@test -x $(BIN)/trackflow && $(BIN)/trackflow demo stop
	-@test -x $(BIN)/trackflow && $(BIN)/trackflow stack down

clean: stop ## remove local state (keeps the download cache)
	rm -rf .trackflow
