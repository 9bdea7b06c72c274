# The two commands a fresh machine needs: `make up` (or `make demo`) and `make test`.
# Everything else they need (virtualenv, MiniStack, release binaries) is set up here.

SHELL := /bin/bash
.DEFAULT_GOAL := help

STATE   := .stack
VENV    := $(STATE)/venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
CHECKOV := $(STATE)/checkov-venv
MINUTES ?= 1
CARGO   ?= cargo
BENCH_REQUESTS ?= 300
# Test modules run side by side: each starts its own MiniStack and mostly waits.
TEST_WORKERS ?= 3

.PHONY: help venv checkov tools build up demo down status trace test test-rust test-stack test-sim lint bench compose-smoke sim

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

venv: $(STAMP) ## Create the git-ignored virtualenv with the pinned MiniStack
$(STAMP): stack/requirements.txt
	@command -v python3 >/dev/null || { echo "python3 is required (3.10 or newer)"; exit 1; }
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r stack/requirements.txt
	@touch $@

checkov: $(CHECKOV)/.installed ## checkov in its own virtualenv (its HCL parser clashes with the stack's)
$(CHECKOV)/.installed: stack/checkov-requirements.txt
	python3 -m venv $(CHECKOV)
	$(CHECKOV)/bin/pip install --quiet --disable-pip-version-check -r stack/checkov-requirements.txt
	@touch $@

tools: ## docker-compose (Debian package) for the compose checks; installed when run as root
	@command -v docker-compose >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's docker-compose (for \`docker-compose config\` only; no engine needed)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; \
	  else \
	    echo "docker-compose is missing: sudo apt-get install docker-compose"; exit 1; \
	  fi; }

build: ## Build the Lambdas (ingester, processor, relay) and the generator in release
	$(CARGO) build --release --locked -p ingester -p processor -p relay -p job-generator

up: venv build ## Start MiniStack on 127.0.0.1:4566 and deploy the pipeline
	$(PY) stack/stack.py up

demo: up ## up, then MINUTES (default 1) of generated traffic, then a summary of end states
	$(PY) stack/stack.py demo --minutes $(MINUTES)

down: ## Stop only what `make up` started
	@if [ -x $(PY) ]; then $(PY) stack/stack.py down; else echo "nothing to stop"; fi

status: venv ## Show whether the stack runs and how full its queues are
	$(PY) stack/stack.py status

trace: venv ## Print job JOB's trace as a waterfall (spans from the local OTLP receiver)
	@test -n "$(JOB)" || { echo "usage: make trace JOB=<job id>"; exit 2; }
	$(PY) stack/stack.py trace '$(JOB)'

compose-smoke: venv ## With Docker: bring the compose stack up, send jobs, check each ended once and has its trace in Jaeger
	$(PY) stack/compose_smoke.py $(SMOKE_ARGS)

# The simulator: `make sim SECONDS=N` runs fresh seeds for N seconds, `make sim SEED=N`
# replays one schedule (its whole trace with TRACE=1).
SIM_ARGS = $(if $(SEED),--seed $(SEED),--seconds $(or $(SECONDS),60)) $(if $(TRACE),--trace)
sim: ## Deterministic simulation under faults and operators: SECONDS=N of fresh seeds, or SEED=N to replay one
	$(CARGO) build --locked -p sim
	./target/debug/sim $(SIM_ARGS)

lint: ## rustfmt and clippy, warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

test-rust: ## Unit tests of the library, the functions and the generator
	$(CARGO) test --locked --workspace

# The regression corpus (every seed that ever found a violation, fixed since), then
# about two minutes of further seeds from a fixed start, so a run in CI is the same
# run anywhere (`make sim` draws fresh ones); one schedule per core.
SIM_FRESH_SECONDS ?= 100
SIM_FIRST_SEED ?= 1796693658000
test-sim: ## The simulator's regression seeds (sim/corpus.txt) and SIM_FRESH_SECONDS of seeds from SIM_FIRST_SEED
	$(CARGO) build --locked -p sim
	./target/debug/sim --corpus sim/corpus.txt
	./target/debug/sim --seconds $(SIM_FRESH_SECONDS) --first-seed $(SIM_FIRST_SEED)

test-stack: venv checkov tools build ## Stack, Terraform and compose tests (each stack test starts its own MiniStack)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

test: lint test-rust test-sim test-stack ## Every test

bench: venv ## Cold start, per-job CPU, size, and AWS requests and cost per job, next to their references (not in make test)
	$(CARGO) build --release --locked -p ingester -p processor -p relay -p job-generator -p hello -p noop
	$(CARGO) bench --locked -p jobs-core --bench per_job
	$(PY) bench/run.py --requests $(BENCH_REQUESTS)
