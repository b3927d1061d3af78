#!/usr/bin/env bash
# The local stack: a Kafka-protocol broker (tansu), PostgreSQL and Redis on 127.0.0.1.
# Installs what is missing (Debian/Ubuntu), starts what is not running, and does nothing for a
# service that already listens.
#
#   deploy/stack.sh up      make sure all three listen
#   deploy/stack.sh down    stop the broker this script started
#   deploy/stack.sh status
#
# Environment:
#   KAFKA_PORT (9092)  BROKER_STORAGE (sqlite: durable and correct; memory: fast, wrong watermarks)
#   TOOLS_DIR  where tansu is installed once and reused (~/.cache/backbone)
set -euo pipefail

TANSU_VERSION=0.6.0
KAFKA_PORT=${KAFKA_PORT:-9092}
BROKER_STORAGE=${BROKER_STORAGE:-sqlite}
TOOLS_DIR=${TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/backbone}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE_DIR=${STATE_DIR:-$ROOT/.stack}
TANSU=$TOOLS_DIR/tansu-$TANSU_VERSION/bin/tansu

log() { printf '[stack] %s\n' "$*" >&2; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do
    listening "$port" && return 0
    sleep 0.1
  done
  log "$what did not start listening on 127.0.0.1:$port"
  return 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  command -v apt-get >/dev/null || { log "no apt-get: install $* by hand"; exit 1; }
  if [ -z "${APT_UPDATED:-}" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_build_deps() {
  # rdkafka builds librdkafka from source: a C toolchain, cmake-free, OpenSSL headers for TLS/SASL.
  local missing=()
  command -v cc >/dev/null || missing+=(build-essential)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
  command -v psql >/dev/null || missing+=(postgresql-client)
  command -v curl >/dev/null || missing+=(curl)
  command -v python3 >/dev/null || missing+=(python3)
  if [ ${#missing[@]} -gt 0 ]; then log "installing ${missing[*]}"; apt_install "${missing[@]}"; fi
}

ensure_tansu() {
  if [ ! -x "$TANSU" ]; then
    log "installing tansu $TANSU_VERSION into $TOOLS_DIR (once; about 10 minutes on 2 cores)"
    cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql,postgres \
      --root "$TOOLS_DIR/tansu-$TANSU_VERSION" --quiet
  fi
}

start_broker() {
  if listening "$KAFKA_PORT"; then log "broker already listening on :$KAFKA_PORT"; return; fi
  ensure_tansu
  mkdir -p "$STATE_DIR/broker"
  local storage
  case "$BROKER_STORAGE" in
    memory) storage="memory://tansu/" ;;
    sqlite) storage="sqlite://tansu.db" ;;
    *) log "BROKER_STORAGE must be memory or sqlite"; exit 1 ;;
  esac
  log "starting tansu ($BROKER_STORAGE) on :$KAFKA_PORT"
  (cd "$STATE_DIR/broker" && nohup "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "$storage" >"$STATE_DIR/broker.log" 2>&1 &
    echo $! >"$STATE_DIR/broker.pid")
  wait_for "$KAFKA_PORT" tansu
}

start_postgres() {
  if listening 5432; then log "PostgreSQL already listening on :5432"; return; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_for 5432 PostgreSQL
  # The services connect as postgres/postgres over TCP (ignored where trust auth is set).
  as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
}

start_redis() {
  if listening 6379; then log "Redis already listening on :6379"; return; fi
  command -v redis-server >/dev/null || { log "installing Redis"; apt_install redis-server; }
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_for 6379 Redis
}

case "${1:-up}" in
  up)
    ensure_build_deps
    start_postgres
    start_redis
    start_broker
    ;;
  down)
    if [ -f "$STATE_DIR/broker.pid" ]; then
      kill "$(cat "$STATE_DIR/broker.pid")" 2>/dev/null || true
      rm -f "$STATE_DIR/broker.pid"
      log "broker stopped"
    fi
    ;;
  status)
    for p in "$KAFKA_PORT:broker" 5432:PostgreSQL 6379:Redis; do
      if listening "${p%%:*}"; then log "${p#*:} up on :${p%%:*}"; else log "${p#*:} down"; fi
    done
    ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
