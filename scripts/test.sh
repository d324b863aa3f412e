#!/usr/bin/env bash
# Runs every test of the workspace against real services: starts Redis, RabbitMQ and
# SeaweedFS (S3) when they are not already running, then `cargo test --workspace`, then (with no
# arguments) scripts/deploy-check.sh on the deployment files.
# Extra arguments go to cargo test (e.g. `scripts/test.sh -p fleet-core`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export FLEET_TEST_S3_PORT=${FLEET_TEST_S3_PORT:-8333}
# Quorum queues left by earlier runs pile up and slow RabbitMQ 3.10 until it stops answering
# handshakes; remove them first (only `<tag>-<32 hex>` test names; nothing else may be testing now).
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import pika' 2>/dev/null || .venv/bin/pip install -q pika
.venv/bin/python scripts/clean_test_queues.py
# 2-core machines: more test threads than cores only adds contention in the engine tests.
cargo test --workspace --locked "$@"
# The whole suite (no arguments, as CI runs it) also checks the deployment files (Dockerfiles,
# docker-compose.yml, the Helm chart) against the `fleet` binary cargo test has just built.
if [ $# -eq 0 ]; then
  exec scripts/deploy-check.sh
fi
