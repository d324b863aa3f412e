#!/usr/bin/env bash
# Runs every test of the workspace against real services: starts Redis, RabbitMQ and
# SeaweedFS (S3) when they are not already running, then `cargo test --workspace`.
# Extra arguments go to cargo test (e.g. `scripts/test.sh -p fleet-core`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export FLEET_TEST_S3_PORT=${FLEET_TEST_S3_PORT:-8333}
# 2-core machines: more test threads than cores only adds contention in the engine tests.
exec cargo test --workspace --locked "$@"
