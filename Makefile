# Boring ML Stack: the user interface. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PORT    ?= 8000
HOST    ?= 127.0.0.1
SCALE   ?= 1
export PORT HOST

# Load-test knobs (see loadtest/README.md)
USERS      ?= 64
SPAWN_RATE ?= 32
DURATION   ?= 30s
SHAPE      ?= constant
MIX        ?= realistic

.PHONY: help install up down test-compose test-hosts seed train serve test lint loadtest bench experiments ab-report ab-demo \
        monitoring-demo audit rollback clean system-deps capacity bench-peers chaos

help: ## this list
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@echo "install: creating $(VENV) from requirements.lock"
	@if uv --version >/dev/null 2>&1; then \
	  uv venv -q --seed --allow-existing --python python3.11 $(VENV) && \
	  VIRTUAL_ENV=$(VENV) uv pip install -q -r requirements.lock && \
	  VIRTUAL_ENV=$(VENV) uv pip install -q --no-deps -e . ; \
	else \
	  python3 -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip && \
	  $(PY) -m pip install -q -r requirements.lock && $(PY) -m pip install -q --no-deps -e . ; \
	fi
	@# Byte-compile once: with PYTHONDONTWRITEBYTECODE set, every process would recompile its imports.
	@$(PY) -m compileall -q -j0 $(VENV)/lib >/dev/null 2>&1 || true
	@touch $(STAMP)

install: $(STAMP) ## create .venv from the lock (seconds when already done)

system-deps: ## tools the tests use: promtool, nginx, wrk (Debian packages)
	@bash deploy/system_deps.sh

# STACK_MODE=auto: docker compose when a Docker engine answers, else local processes.
# docker or local forces one; the tests of local mode force local.
STACK_MODE ?= auto
export STACK_MODE

up: ## start the stack: docker compose, or local processes without a Docker engine (SCALE=2, STACK_MODE=local)
	@if [ "$$(bash deploy/compose_up.sh mode)" = docker ]; then bash deploy/compose_up.sh up $(SCALE); \
	else [ "$(STACK_MODE)" = local ] || echo "up: no Docker engine answers; running the stack as local processes (SQLite)"; \
	  $(MAKE) --no-print-directory install && $(PY) -m stack.local up --scale $(SCALE); fi

down: ## stop what `make up` started (compose: containers go, volumes stay)
	@if [ "$$(bash deploy/compose_up.sh mode)" = docker ]; then bash deploy/compose_up.sh down; \
	  if [ -d var/run ] && [ -x $(PY) ]; then $(PY) -m stack.local down; fi; \
	else $(PY) -m stack.local down; fi

test-compose: install ## the container path for real: engine, Compose v2, stand-in base images, make up .. make down
	$(PY) tests/compose/e2e.py

test-hosts: install system-deps ## past one machine (root): trainer + 2 servers as network-namespace hosts, S3 registry, nginx
	$(PY) tests/hosts/e2e.py

seed: install ## load the demo data into DATABASE_URL (default var/app.db)
	$(PY) -m features.demo $(ARGS)

train: install ## train, gate and deploy a model (ARGS="--model logreg --notes '...'")
	$(PY) -m train $(ARGS)

serve: install ## run the model server in the foreground
	$(PY) -m serve

rollback: install ## re-point `current` to the previous version, or TO=<version>
	$(PY) -m registry rollback $(if $(TO),--to $(TO)) $(if $(REASON),--reason "$(REASON)")

experiments: install ## the experiment log as a table (ARGS="--model lightgbm --last 10"; PLOT=roc_auc)
	$(PY) -m experiments $(if $(PLOT),--plot $(PLOT)) $(ARGS)

ab-report: install ## analyse the running A/B experiment (writes var/ab/)
	$(PY) -m ab $(ARGS)

ab-demo: install ## the whole A/B loop on the demo data, in about a minute
	$(PY) -m ab.demo $(ARGS)

monitoring-demo: install ## the monitoring loop: input drift, then a quality drop from delayed labels, alerting in a real Prometheus (a minute or two)
	$(PY) -m monitoring.demo $(ARGS)

audit: install ## is it time to add complexity? each trigger, measured
	$(PY) -m stack.audit $(ARGS)

loadtest: install ## Locust against HOST (make loadtest HOST=http://127.0.0.1:8000 USERS=64 DURATION=30s)
	$(PY) -m loadtest --host $(if $(filter http%,$(HOST)),$(HOST),http://$(HOST):$(PORT)) \
	  --users $(USERS) --spawn-rate $(SPAWN_RATE) --duration $(DURATION) --shape $(SHAPE) --mix $(MIX) $(ARGS)

bench: install system-deps ## serving benchmark: model calls, /health, /predict, batch, RSS
	$(PY) -m serve.bench $(ARGS)

bench-peers: install system-deps ## this server vs pinned MLServer and BentoML, same model and wrk (var/peers/)
	$(PY) -m serve.peers $(ARGS)

chaos: install ## a real server vs hostile clients, broken registries, sick databases, signals (var/chaos/report.md)
	$(PY) -m serve.chaos $(ARGS)

capacity: install system-deps ## on >= 4 cores: server pinned to 2, wrk + Locust on the rest (loadtest/pinned.sh)
	PY=$(PY) loadtest/pinned.sh

lint: install ## ruff
	$(VENV)/bin/ruff check .

test: install system-deps ## every test (what CI runs)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(ARGS)

clean: ## remove runtime state (var/) and caches; keeps .venv
	rm -rf var .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
