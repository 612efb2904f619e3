# ratings-flow: the two commands a fresh machine needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
GRAPH ?= graphs/ratings.toml
DEMO_EVENTS ?= 200000
DEMO_DAYS ?= 10
MOVIES_GRAPH ?= graphs/movies.toml
MOVIES_DATA ?= graphs/data/movies
RUNTIME := $(or $(CARGO_TARGET_DIR),target)/release/runtime

PLUGIN_DIR := plugins/lib
PLUGINS := ratings-approval ratings-blocklist

.PHONY: help setup build plugins demo demo-replay demo-movies kafka-up kafka-down s3-up s3-down test chaos bench bench-replay bench-stream bench-peers bench-floor bench-state bench-epochs bench-movies bench-s3 bench-cluster clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

setup: ## Install what the build and tests need (Rust toolchain check, Python readers in .venv)
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first"; exit 1; }
	@command -v gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq build-essential; }
	@bash scripts/python-env.sh

build: ## Build the runtime binary (release)
	$(CARGO) build --release -p runtime

plugins: ## Build the shipped rule plugins (release) into plugins/lib/, where graphs/ratings.toml loads them from
	$(CARGO) build --release $(addprefix -p ,$(PLUGINS))
	mkdir -p $(PLUGIN_DIR)
	cp $(foreach p,$(subst -,_,$(PLUGINS)),$(or $(CARGO_TARGET_DIR),target)/release/lib$(p).so) $(PLUGIN_DIR)/

demo: setup build plugins ## Start broker + registry, produce ~200k events, stream them into a fresh lakehouse until idle, show a sample and the summary
	rm -rf .lakehouse
	bash scripts/kafka.sh down >/dev/null
	bash scripts/kafka.sh up
	@trap 'bash scripts/kafka.sh down' EXIT; set -e; \
	$(RUNTIME) --graph $(GRAPH) init; \
	$(RUNTIME) --graph $(GRAPH) produce --count $(DEMO_EVENTS) --days $(DEMO_DAYS); \
	echo "--- stream until no record arrived for 5s (Ctrl-C stops after the current epoch)"; \
	$(RUNTIME) --graph $(GRAPH) --mode stream --stop-when-idle 5s --commit-interval 2s; \
	$(RUNTIME) --graph $(GRAPH) show movie_ratings --limit 10; \
	$(RUNTIME) --graph $(GRAPH) show rejected --limit 8; \
	$(RUNTIME) --graph $(GRAPH) history movie_ratings

demo-replay: setup build plugins ## Backfill demo without Kafka: generate raw partitions, replay them in two steps, check and plan maintenance
	rm -rf .lakehouse
	$(RUNTIME) --graph $(GRAPH) init
	$(RUNTIME) --graph $(GRAPH) generate --events 300000 --days 10 --start 2025-05-01
	$(RUNTIME) --graph $(GRAPH) --mode replay --from 2025-05-01 --to 2025-05-05
	$(RUNTIME) --graph $(GRAPH) --mode replay --from 2025-05-06
	$(RUNTIME) --graph $(GRAPH) show movie_ratings --limit 10 --where rating_date=2025-05-03
	$(RUNTIME) --graph $(GRAPH) history movie_ratings
	$(RUNTIME) --graph $(GRAPH) check --table movie_ratings --partition rating_date=2025-05-10 --as-of 2025-05-11T00:00:00Z
	$(RUNTIME) --graph $(GRAPH) maintain --dry-run

demo-movies: setup build ## The movies pipeline (graphs/movies.toml) on the same engine: stream the sample exports from Kafka into a fresh lakehouse, check and show the result
	rm -rf .lakehouse/movies
	bash scripts/kafka.sh down >/dev/null
	bash scripts/kafka.sh up movie.ratings.films.v1 3
	@trap 'bash scripts/kafka.sh down' EXIT; set -e; \
	$(RUNTIME) --graph $(MOVIES_GRAPH) init; \
	$(RUNTIME) --graph $(MOVIES_GRAPH) produce --from $(MOVIES_DATA); \
	echo "--- stream until no record arrived for 3s"; \
	$(RUNTIME) --graph $(MOVIES_GRAPH) --mode stream --stop-when-idle 3s --commit-interval 2s; \
	$(RUNTIME) --graph $(MOVIES_GRAPH) check --table movie_ratings_curated --partition ingestion_date=2021-01-02; \
	$(RUNTIME) --graph $(MOVIES_GRAPH) show movie_ratings_curated --limit 5; \
	$(RUNTIME) --graph $(MOVIES_GRAPH) show rejected --limit 5

kafka-up: setup ## Start the Kafka-protocol broker (Tansu, 127.0.0.1:9092) and the test schema registry (127.0.0.1:8081)
	bash scripts/kafka.sh up

kafka-down: ## Stop what kafka-up started
	bash scripts/kafka.sh down

s3-up: ## Start the S3-protocol server (s3s-fs from tools/s3-server, installed into .tools/ on first use) on 127.0.0.1:9000 with bucket `warehouse`
	bash scripts/s3.sh up

s3-down: ## Stop what s3-up started
	bash scripts/s3.sh down

test: setup ## Run the whole test suite (unit, oracle, whole-pipeline, stream against the real broker, PyIceberg/DuckDB readers)
	bash scripts/test.sh

chaos: setup ## The long reliability campaign: 60 seeded SIGKILLs while producing, a 20 s broker pause, a locked catalog, a full disk, every failpoint, 1M fuzzed frames; prints the figures
	bash scripts/chaos.sh

bench: plugins ## Criterion benchmarks (replay path on 1M generated events, commit cost, plugin call cost, the stream floor)
	$(CARGO) bench -p ratings-benches

bench-replay: build plugins ## Whole-process timing of --mode replay on 10M events (release)
	bash benches/replay_10m.sh

bench-peers: setup build plugins ## The same N raw rows (default 10M) through DuckDB 1.5.5 (the rules as SQL) and through --mode replay, in one run: times, ratio, max RSS, row counts
	bash benches/peers.sh $(or $(EVENTS),10000000)

bench-floor: setup ## Per-record floor of the stream (Avro read, raw columns, rules, Parquet) and pyarrow's writer on the same columns
	$(CARGO) bench -p ratings-benches --bench floor
	.venv/bin/python benches/floor_pyarrow.py

bench-movies: setup build ## The movies graph on the sample exports: replay of both dates (whole process, 3 runs) and a stream of 10 copies (records/s, CPU-seconds per million)
	bash benches/movies.sh

bench-s3: build plugins ## The warehouse on the local S3 server against local disk, same session: replay of 1M events, a 2M-record stream, requests and bytes
	bash benches/s3.sh

bench-cluster: build plugins ## One process x 2 workers against 2 processes x 1 worker on this machine: replay and stream throughput, bytes exchanged per record
	bash benches/cluster.sh

bench-epochs: build plugins ## Epoch time against state: 12M events over 12 days replayed in three 4M-event epochs, 3 runs; epoch seconds, last / first and its median
	bash benches/epochs.sh

bench-state: ## Bytes per live key of the upsert state and the curated writer's row index (counting allocator)
	$(CARGO) bench -p ratings-benches --bench state_bytes

bench-stream: build plugins ## Stream throughput against bare consumers (the native fetch path, librdkafka, rskafka; each side's and the broker's CPU time), and produce-to-snapshot freshness
	bash benches/stream.sh

clean: ## Remove build output, the demo lakehouse, broker state and the Python environment
	bash scripts/kafka.sh down >/dev/null 2>&1 || true
	$(CARGO) clean
	rm -rf .lakehouse .venv .kafka $(PLUGIN_DIR)
