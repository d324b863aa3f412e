#!/usr/bin/env bash
# Runs every test of the workspace against real services: starts Redis, RabbitMQ and
# SeaweedFS (S3) when they are not already running, then (with no arguments) scripts/audit.sh,
# `cargo test --workspace`, then (with no arguments) scripts/deploy-check.sh on the deployment files.
# Extra arguments go to cargo test (e.g. `scripts/test.sh -p fleet-core`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export FLEET_TEST_S3_PORT=${FLEET_TEST_S3_PORT:-8333}
# The whole suite (no arguments) first audits Cargo.lock against the RustSec advisory database.
if [ $# -eq 0 ]; then
  scripts/audit.sh
fi
# 2-core machines: more test threads than cores only adds contention in the engine tests.
cargo test --workspace --locked "$@"
# The whole suite (no arguments, as CI runs it) also checks the deployment files (Dockerfiles,
# docker-compose.yml, the Helm chart) against the `fleet` binary cargo test has just built.
if [ $# -eq 0 ]; then
  exec scripts/deploy-check.sh
fi
