# ratings-flow: the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
GRAPH ?= graphs/ratings.toml
DEMO_EVENTS ?= 300000
DEMO_DAYS ?= 10
DEMO_START ?= 2025-05-01
RUNTIME := $(or $(CARGO_TARGET_DIR),target)/release/runtime

.PHONY: help setup build demo test test-rust test-readers bench bench-replay clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

setup: ## Install what the build and tests need (Rust toolchain check, Python readers in .venv)
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first"; exit 1; }
	@command -v gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq build-essential; }
	@bash scripts/python-env.sh

build: ## Build the runtime binary (release)
	$(CARGO) build --release -p runtime

demo: setup build ## Generate ~300k events over 10 days into a fresh lakehouse, replay them, show a sample and a summary
	rm -rf .lakehouse
	$(RUNTIME) --graph $(GRAPH) init
	$(RUNTIME) --graph $(GRAPH) generate --events $(DEMO_EVENTS) --days $(DEMO_DAYS) --start $(DEMO_START)
	@echo "--- replay the first five days, then the rest: the second run seeds from curated and overwrites"
	$(RUNTIME) --graph $(GRAPH) --mode replay --from $(DEMO_START) --to 2025-05-05
	$(RUNTIME) --graph $(GRAPH) --mode replay --from 2025-05-06
	$(RUNTIME) --graph $(GRAPH) show movie_ratings --limit 10 --where rating_date=2025-05-03
	$(RUNTIME) --graph $(GRAPH) show rejected --limit 5
	$(RUNTIME) --graph $(GRAPH) history movie_ratings

test: setup ## Run the whole test suite (unit, oracle, whole-pipeline, PyIceberg/DuckDB readers)
	bash scripts/test.sh

bench: ## Criterion benchmarks (replay path on 1M generated events)
	$(CARGO) bench -p ratings-benches

bench-replay: build ## Whole-process timing of --mode replay on 10M events (release)
	bash benches/replay_10m.sh

clean: ## Remove build output, the demo lakehouse and the Python environment
	$(CARGO) clean
	rm -rf .lakehouse .venv
