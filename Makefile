# Two commands on a fresh machine: `make run` (the system with a local stack and demo traffic)
# and `make test` (every test, against the real local stack).
SHELL := /bin/bash
CARGO ?= cargo
export KAFKA_BROKERS ?= 127.0.0.1:9092
export DATABASE_URL ?= postgres://postgres:postgres@127.0.0.1:5432/postgres
# Runs each cargo test stage against a fresh broker of its own. `make test WITH_BROKER=` runs
# them against KAFKA_BROKERS instead.
WITH_BROKER ?= deploy/with-broker.sh

.PHONY: stack stack-down test test-stack lint fmt run bench-sync bench-certificates bench-loader bench-two-way check-rules check-deploy fuzz

stack:
	deploy/stack.sh up

stack-down:
	deploy/stack.sh down

## Every test: unit, property, adapter (PostgreSQL, broker, wiremock) and end to end.
test: stack test-stack
	$(CARGO) build --workspace --bins --quiet
	$(WITH_BROKER) $(CARGO) test --workspace --exclude backbone-tests --no-fail-fast
	$(WITH_BROKER) $(CARGO) test -p backbone-tests --lib --test service --no-fail-fast
	# The operator console's browser test needs Debian's chromium and tests/console's npm packages.
	deploy/browser-deps.sh
	# End-to-end tests each run whole services against the stage's broker: two at a time.
	$(WITH_BROKER) $(CARGO) test -p backbone-tests --test e2e --no-fail-fast -- --test-threads=2

## The broker scripts' own tests: the supervisor restarts a silent broker, with-broker.sh cleans up.
test-stack: stack
	deploy/tests/stack-test.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings

fmt:
	$(CARGO) fmt --all

## The system: local stack, crm-sim, crm-sync, demo events; prints what reached the CRM and the log.
run: stack
	deploy/run-demo.sh

## crm-sync throughput and latency against crm-sim, with same-run baselines (see docs/benchmarks.md).
bench-sync: stack
	$(CARGO) build --release --quiet -p crm-sync -p crm-sim -p backbone-bench
	KAFKA_PORT=9094 BROKER_STORAGE=memory STATE_DIR=$(CURDIR)/.stack/bench deploy/stack.sh up
	target/release/bench-sync --brokers 127.0.0.1:9094 --out target/bench/crm-sync.json

## gift-certificates: authorize+capture pairs/s, latency at 500 requests/s, cached balance checks,
## RSS, with a same-run pgbench baseline of the same SQL (see docs/benchmarks.md).
bench-certificates: stack
	$(CARGO) build --release --quiet -p gift-certificates -p backbone-bench
	KAFKA_PORT=9094 BROKER_STORAGE=memory STATE_DIR=$(CURDIR)/.stack/bench deploy/stack.sh up
	target/release/bench-certificates --brokers 127.0.0.1:9094 $(if $(SCALE),--scale-only) --out target/bench/certificates.json

## batch-loader: a generated file to every row issued, with a same-run PostgreSQL COPY baseline.
## COUNT=20000 for a quick run (default 1,000,000); VIA=http,kafka to measure Kafka too.
bench-loader: stack
	$(CARGO) build --release --quiet -p gift-certificates -p batch-loader -p backbone-bench
	KAFKA_PORT=9094 BROKER_STORAGE=memory STATE_DIR=$(CURDIR)/.stack/bench deploy/stack.sh up
	target/release/bench-loader --brokers 127.0.0.1:9094 $(if $(COUNT),--count $(COUNT)) $(if $(VIA),--via $(VIA)) --out target/bench/batch-loader.json

## Two-way sync: outbox relay rows/s against a same-run COPY of the same rows, webhook intake
## requests/s against a same-run bare axum endpoint, p99 from an API change to the CRM write at
## 200 changes/s (see docs/benchmarks.md).
bench-two-way: stack
	$(CARGO) build --release --quiet -p crm-sync -p crm-sim -p backbone-bench
	KAFKA_PORT=9094 BROKER_STORAGE=memory STATE_DIR=$(CURDIR)/.stack/bench deploy/stack.sh up
	$(or $(CARGO_TARGET_DIR),target)/release/bench-two-way --brokers 127.0.0.1:9094 --out target/bench/two-way.json

## Prometheus rules check (needs promtool: apt-get install prometheus).
check-rules:
	promtool check rules deploy/prometheus/crm-sync-alerts.yml deploy/prometheus/gift-certificates-alerts.yml

## What ships, checked offline (no container engine, no cluster; not part of `make test`): the
## Dockerfiles (hadolint), the Kubernetes manifests rendered (schemas, checkov) and the rules
## (promtool). Installs the tools it lacks into ~/.cache/backbone/deploy-tools (see docs/deploy.md).
check-deploy:
	deploy/check-deploy.sh

## Fuzz targets (cargo-fuzz, nightly toolchain), each for FUZZ_SECONDS; not part of `make test`.
## Reads fuzz/corpus/<target>, writes new inputs to fuzz/corpus-new/<target> (see fuzz/README.md).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= tracking_event dead_letter_headers vendor_transformers order_payment upload_job batch_file
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus-new/$$t && \
		$(CARGO) +nightly fuzz run $$t fuzz/corpus-new/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=8192 -timeout=10 -print_final_stats=1 || exit 1; \
	done
