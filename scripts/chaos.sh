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
# FLEET_CHAOS_MIXED_FAULTS (8), FLEET_CHAOS_REPORT (file for the table, target/chaos-report.md).
# RabbitMQ and Redis are private instances the suite starts and restarts itself (the
# rabbitmq-server and redis-server packages must be installed; scripts/services.sh installs
# them); S3 is the test SeaweedFS behind a cuttable loopback link.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
export FLEET_TEST_S3_PORT=${FLEET_TEST_S3_PORT:-8333}
export FLEET_CHAOS_JOBS=${1:-${FLEET_CHAOS_JOBS:-500}}
export FLEET_CHAOS_REPORT=${FLEET_CHAOS_REPORT:-$PWD/target/chaos-report.md}
# Builds the `fleet` binary the suite runs as separate processes, with the test binaries, exactly
# as `cargo test --workspace` does (selecting only the e2e target would change feature resolution
# and rebuild half the dependency tree), then runs the e2e binary itself.
e2e=$(cargo test --workspace --locked --no-run --message-format=json-render-diagnostics |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "e2e" and m.get("executable"):
        print(m["executable"])')
cd tests
"$e2e" chaos_suite_full --ignored --nocapture --test-threads 1
echo "table written to $FLEET_CHAOS_REPORT"
