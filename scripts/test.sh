#!/usr/bin/env bash
# Runs every test of the workspace against real services: starts Redis, RabbitMQ and
# SeaweedFS (S3) when they are not already running, then (with no arguments) scripts/audit.sh,
# scripts/unused-deps.py and `cargo clippy -- -D warnings`, `cargo test --workspace`, then (with no
# arguments) scripts/deploy-check.sh on the deployment files.
# Extra arguments go to cargo test (e.g. `scripts/test.sh -p fleet-core`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export FLEET_TEST_S3_PORT=${FLEET_TEST_S3_PORT:-8333}
# Quorum queues left by test runs pile up and slow RabbitMQ 3.10 until it stops answering
# handshakes; remove them before and after (only `<tag>-<32 hex>` test names; nothing else may be
# testing meanwhile).
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import pika' 2>/dev/null || .venv/bin/pip install -q pika
# the Standard Webhooks reference library, which fleet-webhooks' tests verify deliveries with
.venv/bin/python -c 'import standardwebhooks' 2>/dev/null || .venv/bin/pip install -q standardwebhooks
clean_queues() { .venv/bin/python scripts/clean_test_queues.py || echo "[clean] failed (tests go on)" >&2; }
clean_queues
# The whole suite (no arguments) first audits Cargo.lock against the RustSec advisory database.
if [ $# -eq 0 ]; then
  scripts/audit.sh
  # every declared dependency is used (what `cargo machete` checks; no build, no install)
  python3 scripts/unused-deps.py
  # lints as errors, every target (tests, benches) included
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi
status=0
cargo test --workspace --locked "$@" || status=$?
clean_queues
[ "$status" -eq 0 ] || exit "$status"
# The whole suite (no arguments, as CI runs it) also checks the deployment files (Dockerfiles,
# docker-compose.yml, the Helm chart) against the `fleet` binary cargo test has just built.
if [ $# -eq 0 ]; then
  exec scripts/deploy-check.sh
fi
