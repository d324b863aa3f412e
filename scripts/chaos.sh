#!/usr/bin/env bash
# The full fault suite (docs/RELIABILITY.md): N jobs per scenario (default 500) through a
# dispatcher process and worker processes while workers are SIGKILLed and SIGSTOPped, the
# dispatcher is SIGKILLed, RabbitMQ and Redis restart and S3 goes away, then a random mix.
# Prints `scenario | accepted | succeeded | failed | lost | duplicated | time to drain` and fails
# if anything accepted was lost or duplicated.
#
#   scripts/chaos.sh [N]
#
# Environment: FLEET_CHAOS_RATE (jobs/s submitted, 8), FLEET_CHAOS_WORKERS (3),
# FLEET_CHAOS_SCENARIOS (e.g. 1,5,7; default all), FLEET_CHAOS_SEED (the mix, 7),
# FLEET_CHAOS_MIXED_FAULTS (8), FLEET_CHAOS_REPORT (file for the table, chaos-report.md).
# RabbitMQ and Redis are private instances the suite starts and restarts itself (the
# rabbitmq-server and redis-server packages must be installed; scripts/services.sh installs
# them); S3 is the test SeaweedFS behind a cuttable loopback link.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export FLEET_TEST_S3_PORT=${FLEET_TEST_S3_PORT:-8333}
export FLEET_CHAOS_JOBS=${1:-${FLEET_CHAOS_JOBS:-500}}
export FLEET_CHAOS_REPORT=${FLEET_CHAOS_REPORT:-chaos-report.md}
# Builds the `fleet` binary the suite runs as separate processes, with the test binaries.
cargo test --workspace --locked --no-run
cargo test --workspace --locked --test e2e -- chaos_suite_full --ignored --nocapture --test-threads 1
echo "table written to $FLEET_CHAOS_REPORT"
