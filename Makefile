# Loopwise: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# checkov lives in a virtual env of its own: installed next to the project it downgrades packages.
CHECKOV_VENV ?= .venv-checkov
CHECKOV_VERSION ?= 3.3.30
PYTEST_ARGS ?=
# promtool and prometheus (tests/observability): Debian's prometheus package, installed when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help setup prometheus-tools dashboards protos lint test test-fast demo up down status bench bench-serve bench-ingest bench-attribution bench-propensity bench-reformulation bench-learning bench-debiasing bench-error-memory bench-fuzz bench-soak clean

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check 'checkov==$(CHECKOV_VERSION)'
	touch $@

prometheus-tools:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus package (promtool, prometheus) for tests/observability"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

setup: $(BIN)/.installed $(CHECKOV_VENV)/.installed prometheus-tools ## virtual envs with the project and its dev tools (checkov apart), promtool

protos: setup ## regenerate shared/v1 from protos/ (committed; a test fails when stale)
	$(BIN)/python scripts/gen_protos.py

dashboards: setup ## regenerate the Grafana dashboards and alert rules (observability/, helm/loopwise/files/; committed, a test fails when stale)
	$(BIN)/python observability/dashboards.py

lint: setup ## ruff
	$(BIN)/ruff check .

test: setup ## the whole suite: unit, integration (real broker, Redis, gRPC) and e2e
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup ## unit tests only (no network)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

demo: setup ## start the local stack, send MovieLens-100K traffic, show it flowing, stop
	$(BIN)/loopwise demo

up: setup ## start the local stack and leave it running (.loopwise/stack.json)
	$(BIN)/loopwise up

status: setup ## what the local stack runs
	$(BIN)/loopwise status

down: setup ## stop the local stack
	$(BIN)/loopwise down

bench-serve: setup ## Rank (100 candidates) vs a bare gRPC echo
	$(BIN)/python bench/serve.py

bench-ingest: setup ## collector vs a bare kafka-python producer (and confluent-kafka)
	$(BIN)/python bench/ingest.py

bench-attribution: setup ## miner attribution: correctness on a known replay, vs a bare aiokafka consumer
	$(BIN)/python bench/attribution.py

bench-propensity: setup ## position propensities on the Open Bandit sample: EM vs the random policy's
	$(BIN)/python bench/propensity_obd.py

bench-reformulation: setup ## rewrites mined on the simulator: defect reduction, win/loss, evidence-to-served, miner vs bare
	$(BIN)/python bench/reformulation.py

bench-learning: setup ## MovieLens progressive AUC: Loopwise retraining vs cold start, Vowpal Wabbit, River
	$(BIN)/python bench/learning.py

bench-debiasing: setup ## Rel-MF semi-synthetic MovieLens-100K (naive vs miner IPS vs true theta) and the OBD off-policy check
	$(BIN)/python bench/debiasing.py

bench-error-memory: setup ## MovieLens replay with the error memory on vs off: gAUC, shift recovery, Rank overhead, click-to-effect
	$(BIN)/python bench/error_memory.py

bench-fuzz: setup ## coverage-guided fuzzing (atheris) of every gRPC method and record intake, 60 s per target
	$(BIN)/python bench/fuzz.py

bench-soak: setup ## the local stack for 10 min of mixed traffic with a broker stall, a Redis restart, a miner kill
	$(BIN)/python bench/soak.py

bench: bench-serve bench-ingest bench-attribution bench-propensity bench-reformulation bench-learning bench-debiasing bench-error-memory bench-fuzz bench-soak ## every benchmark

clean: ## remove the virtual env and local state
	rm -rf $(VENV) $(CHECKOV_VENV) .loopwise .pytest_cache
