#!/usr/bin/env bash
# A RabbitMQ cluster on loopback for tests, next to (never instead of) the machine's broker:
#
#   scripts/rabbitmq-cluster.sh start DIR        # boots N nodes, joins them into one cluster
#   scripts/rabbitmq-cluster.sh stop DIR         # stops every node (data stays in DIR)
#   scripts/rabbitmq-cluster.sh urls DIR         # one AMQP URL per node
#   scripts/rabbitmq-cluster.sh start-node DIR I # starts node I (1-based) again on its data
#   scripts/rabbitmq-cluster.sh stop-node DIR I  # clean stop of node I
#   scripts/rabbitmq-cluster.sh kill-node DIR I  # SIGKILL of node I's Erlang VM
#   scripts/rabbitmq-cluster.sh ctl DIR I ARGS…  # rabbitmqctl against node I
#
# Every node has its own name (`${RABBITMQ_CLUSTER_NAME}I@localhost`), AMQP port
# (`$RABBITMQ_CLUSTER_PORT + I - 1`), distribution port (AMQP port + 20000), data, logs and
# configuration under DIR/nI; they share one Erlang cookie (DIR/.erlang.cookie, HOME=DIR).
# Knobs (read by `start`, remembered in DIR/cluster.env for the other commands):
#   RABBITMQ_CLUSTER_NODES (3), RABBITMQ_CLUSTER_PORT (5781), RABBITMQ_CLUSTER_NAME (fleetc).
# The management plugin stays off. Boot takes 10–30 s per node on a busy 2-core machine; the
# nodes boot in parallel, then nodes 2..N `join_cluster` node 1.
set -euo pipefail

usage() { echo "usage: $0 start|stop|urls DIR | start-node|stop-node|kill-node DIR I | ctl DIR I ARGS…" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2
log() { echo "[rabbitmq-cluster] $*" >&2; }

# Debian's real scripts: the /usr/sbin wrappers switch to the rabbitmq user and drop the
# environment that makes a node private.
bin=/usr/lib/rabbitmq/bin
[ -x "$bin/rabbitmq-server" ] || bin=$(dirname "$(command -v rabbitmq-server)")
boot_limit=${RABBITMQ_CLUSTER_BOOT_SECS:-180}

load_settings() {
  if [ -f "$dir/cluster.env" ]; then
    # shellcheck source=/dev/null
    . "$dir/cluster.env"
  else
    nodes=${RABBITMQ_CLUSTER_NODES:-3}
    port=${RABBITMQ_CLUSTER_PORT:-5781}
    name=${RABBITMQ_CLUSTER_NAME:-fleetc}
  fi
}

node_name() { echo "${name}$1@localhost"; }
amqp_port() { echo $((port + $1 - 1)); }

# Runs a RabbitMQ script with node I's environment.
with_node() {
  local i=$1 nd="$dir/n$1"
  shift
  env HOME="$dir" \
    RABBITMQ_NODENAME="$(node_name "$i")" \
    RABBITMQ_NODE_PORT="$(amqp_port "$i")" \
    RABBITMQ_DIST_PORT=$(($(amqp_port "$i") + 20000)) \
    RABBITMQ_MNESIA_BASE="$nd/mnesia" \
    RABBITMQ_LOG_BASE="$nd/log" \
    RABBITMQ_CONFIG_FILE="$nd/rabbitmq.conf" \
    RABBITMQ_CONF_ENV_FILE="$nd/rabbitmq-env.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$nd/enabled_plugins" \
    RABBITMQ_PID_FILE="$nd/pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    ERL_EPMD_ADDRESS=127.0.0.1 \
    ERL_CRASH_DUMP_SECONDS=0 \
    "$@"
}

ctl() { local i=$1; shift; with_node "$i" "$bin/rabbitmqctl" -n "$(node_name "$i")" "$@"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

prepare() {
  [ ! -e "$dir/cluster.env" ] || { log "$dir already holds a cluster (stop it and remove the directory first)"; exit 1; }
  nodes=${RABBITMQ_CLUSTER_NODES:-3}
  port=${RABBITMQ_CLUSTER_PORT:-5781}
  name=${RABBITMQ_CLUSTER_NAME:-fleetc}
  [ "$port" != 5672 ] || { log "port 5672 is the machine's broker; pick another RABBITMQ_CLUSTER_PORT"; exit 1; }
  mkdir -p "$dir"
  for i in $(seq 1 "$nodes"); do
    if port_open "$(amqp_port "$i")"; then log "port $(amqp_port "$i") is in use"; exit 1; fi
  done
  printf 'nodes=%s\nport=%s\nname=%s\n' "$nodes" "$port" "$name" >"$dir/cluster.env"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/.erlang.cookie"
  chmod 400 "$dir/.erlang.cookie"
  for i in $(seq 1 "$nodes"); do
    local nd="$dir/n$i"
    mkdir -p "$nd"
    printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users = none\nconsumer_timeout = 600000\n' \
      "$(amqp_port "$i")" >"$nd/rabbitmq.conf"
    : >"$nd/rabbitmq-env.conf"
    echo '[].' >"$nd/enabled_plugins"
  done
}

spawn_node() {
  local i=$1
  with_node "$i" setsid "$bin/rabbitmq-server" >>"$dir/n$i/server.out" 2>&1 </dev/null &
}

await_node() {
  local i=$1 waited=0
  until ctl "$i" await_startup --timeout 5 >/dev/null 2>&1; do
    waited=$((waited + 1))
    if [ $((waited * 2)) -gt "$boot_limit" ]; then
      log "node $(node_name "$i") did not boot; see $dir/n$i/server.out and $dir/n$i/log"
      exit 1
    fi
    sleep 1
  done
}

join_node() {
  local i=$1
  ctl "$i" stop_app >/dev/null
  ctl "$i" join_cluster "$(node_name 1)" >/dev/null
  ctl "$i" start_app >/dev/null
}

stop_node() {
  local i=$1
  ctl "$i" stop >/dev/null 2>&1 || true
  local pid
  pid=$(cat "$dir/n$i/pid" 2>/dev/null || true)
  for _ in $(seq 1 60); do
    { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; } || break
    sleep 1
  done
}

kill_node() {
  local pid
  pid=$(cat "$dir/n$1/pid" 2>/dev/null) || { log "node $1 has no pid file"; exit 1; }
  kill -KILL "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

urls() {
  for i in $(seq 1 "$nodes"); do echo "amqp://guest:guest@127.0.0.1:$(amqp_port "$i")/%2f"; done
}

case $cmd in
  start)
    prepare
    for i in $(seq 1 "$nodes"); do spawn_node "$i"; done
    for i in $(seq 1 "$nodes"); do await_node "$i"; done
    for i in $(seq 2 "$nodes"); do join_node "$i"; done
    log "cluster of $nodes nodes up: $(node_name 1) … $(node_name "$nodes") on ports $port–$(amqp_port "$nodes")"
    urls
    ;;
  stop)
    load_settings
    for i in $(seq "$nodes" -1 1); do stop_node "$i"; done
    ;;
  urls) load_settings; urls ;;
  start-node) load_settings; spawn_node "$1"; await_node "$1" ;;
  stop-node) load_settings; stop_node "$1" ;;
  kill-node) load_settings; kill_node "$1" ;;
  ctl) load_settings; i=$1; shift; ctl "$i" "$@" ;;
  *) usage ;;
esac
