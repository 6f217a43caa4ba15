# Two commands on a fresh machine: `make run` and `make test`. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# A shared deployment keeps its variables in `.env` (see deploy/shared.env.example).
ifneq (,$(wildcard .env))
include .env
export $(shell sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' .env)
endif

export LAKEHOUSE_DEPLOYMENT ?= local
export DAGSTER_HOME ?= $(CURDIR)/.dagster
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
# dbt's own environment (dbt/pyproject.toml): see the note there.
DBT_VENV := $(CURDIR)/dbt/.venv
UV_VERSION := 0.13.8
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)
SCALE ?= 0.1
HOST ?= 127.0.0.1
PORT ?= 3000
# A Celery worker (LAKEHOUSE_EXECUTOR=celery): its name and how many steps it executes at once.
export LAKEHOUSE_CELERY_BROKER ?= redis://127.0.0.1:6379/0
WORKER_NAME ?= worker
WORKER_CONCURRENCY ?= 2

.PHONY: help install instance run test test-fast lint dev metrics worker bench bench-curve clean

help:
	@echo "make run    install, build the demo source if absent, advance it one batch, materialise everything, print a summary"
	@echo "make test   install and run the whole test suite (what .ci/run calls)"
	@echo "make test-fast  the tests of every module's logic on small data, for the edit loop (no slow ones)"
	@echo "make dev    the Dagster UI and daemon on http://$(HOST):$(PORT)"
	@echo "make metrics  the pipeline's health for Prometheus on http://127.0.0.1:9464/metrics"
	@echo "make worker [WORKER_NAME=..] [WORKER_CONCURRENCY=2]  a Celery worker for LAKEHOUSE_EXECUTOR=celery"
	@echo "make bench  [SCALE=1] [REPEAT=3] the pipeline against the floor and a dbt alternative"
	@echo "make bench-curve  time and memory at scales 0.1, 1 and 3 (one repetition each)"
	@echo "make lint   ruff"
	@echo "make clean  remove the demo data, the Dagster instance and the virtualenv"

# uv from PyPI into a private folder when the machine has none.
$(CURDIR)/.tools/bin/uv:
	python3 -m venv $(CURDIR)/.tools
	$(CURDIR)/.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --quiet --compile-bytecode
	@touch $@

$(DBT_VENV)/.installed: dbt/pyproject.toml dbt/uv.lock | $(UV)
	$(UV) sync --frozen --quiet --compile-bytecode --project dbt
	@touch $@

# The dbt manifest, prepared before anything loads the definitions (run workers never parse).
MANIFEST := dbt/target/manifest.json
DBT_SOURCES := dbt/dbt_project.yml dbt/profiles.yml $(shell find dbt/models dbt/tests -type f 2>/dev/null)

$(MANIFEST): $(DBT_VENV)/.installed $(DBT_SOURCES)
	cd dbt && $(DBT_VENV)/bin/dbt parse --profiles-dir . --quiet

# Dagster starts a run's loggers from its run config only: a run of an asset selection names
# the JSON one itself (docs/operations.md, Structured logs).
JSON_LOGS := $(if $(filter json,$(LAKEHOUSE_LOG_FORMAT)),--config-json '{"loggers": {"console": {}}}')

# The instance of the deployment (telemetry off, a run queue of one, one DuckDB writer), written
# every time so that switching LAKEHOUSE_DEPLOYMENT takes effect.
instance:
	@test -f deploy/dagster.$(LAKEHOUSE_DEPLOYMENT).yaml \
	  || { echo "LAKEHOUSE_DEPLOYMENT must be local or shared, not '$(LAKEHOUSE_DEPLOYMENT)'"; exit 2; }
	@mkdir -p $(DAGSTER_HOME)/.nux
	@cp deploy/dagster.$(LAKEHOUSE_DEPLOYMENT).yaml $(DAGSTER_HOME)/dagster.yaml
	@printf 'seen: 1\n' > $(DAGSTER_HOME)/.nux/nux.yaml

install: $(VENV)/.installed $(MANIFEST) instance

run: install
	$(BIN)/lakehouse demo init --scale $(SCALE)
	$(BIN)/lakehouse demo advance
	@status=0; $(BIN)/dagster asset materialize -m lakehouse.definitions --select '*' $(JSON_LOGS) || status=$$?; \
	  $(BIN)/lakehouse summary; \
	  if [ $$status -ne 0 ]; then echo "materialisation failed (exit $$status): see the log above"; fi; \
	  exit $$status

# As many pytest workers as cores; the tests sharing a module's built lake or server stay on one.
test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -n auto --dist loadgroup

test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The benchmark's own default scale is 1; `make bench SCALE=3` overrides it.
BENCH_SCALE := $(if $(filter command line,$(origin SCALE)),$(SCALE),1)
REPEAT ?= 3
CURVE ?= 0.1 1 3

bench: install
	$(BIN)/python -m bench.run --scale $(BENCH_SCALE) --repeat $(REPEAT)

bench-curve: install
	@for scale in $(CURVE); do $(BIN)/python -m bench.run --scale $$scale --repeat 1 || exit $$?; done

# LAKEHOUSE_LOG_FORMAT=json turns the webserver's and the daemon's lines into JSON as well.
dev: install
	$(BIN)/dagster dev -w workspace.yaml --host $(HOST) --port $(PORT) \
	  $(if $(filter json,$(LAKEHOUSE_LOG_FORMAT)),--log-format json)

# The metrics read the instance the daemon writes (DAGSTER_HOME) and the lake (docs/operations.md).
metrics: install
	$(BIN)/lakehouse metrics serve

# One Celery worker in the foreground, for runs with LAKEHOUSE_EXECUTOR=celery: start one on
# each worker machine, with the runs' settings (docs/operations.md). dagster-celery starts
# `celery` from the PATH.
worker: install
	PATH="$(BIN):$$PATH" LAKEHOUSE_EXECUTOR=celery $(BIN)/dagster-celery worker start -A dagster_celery.app \
	  -y deploy/celery.yaml -n $(WORKER_NAME) -- --concurrency=$(WORKER_CONCURRENCY)

clean:
	rm -rf data $(DAGSTER_HOME) $(VENV) $(DBT_VENV) .tools dbt/target dbt/logs
