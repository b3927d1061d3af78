#!/usr/bin/env bash
# The local stack: a Kafka-protocol broker (tansu), PostgreSQL and Redis on 127.0.0.1.
# Installs what is missing (Debian/Ubuntu), starts what is not running, and does nothing for a
# service that already listens.
#
#   deploy/stack.sh up         make sure all three listen
#   deploy/stack.sh up-broker  only the broker (what deploy/with-broker.sh uses)
#   deploy/stack.sh down       stop the broker this script started, and its supervisor
#   deploy/stack.sh status     which services listen; whether the broker answers a request
#
# The broker runs under a supervisor (this script's `supervise` mode, detached with setsid):
# it probes tansu with a Kafka Metadata request (deploy/broker-probe.py) every
# BROKER_PROBE_INTERVAL seconds and, after BROKER_PROBE_FAILURES failures in a row, or when
# tansu exits, restarts it on the same state directory. `up` returns once the broker answers.
# Files in STATE_DIR: broker.pid (the supervisor), tansu.pid (the broker), broker.log (both).
#
# Environment:
#   KAFKA_PORT (9092)  BROKER_STORAGE (sqlite: durable and correct; memory: fast, wrong watermarks)
#   STATE_DIR  broker data, pid files and log (.stack)
#   TOOLS_DIR  where tansu is installed once and reused (~/.cache/backbone)
#   BROKER_PROBE_INTERVAL (2 s)  BROKER_PROBE_TIMEOUT (3 s)  BROKER_PROBE_FAILURES (3)
#   BROKER_START_TIMEOUT (60 s: how long `up` waits for the broker to answer)
#   BROKER_STOP_GRACE (5 s, whole seconds: from TERM to KILL when stopping tansu)
#   BROKER_OWNER_PID  if set, the supervisor stops the broker when that process is gone
set -euo pipefail

TANSU_VERSION=0.6.0
KAFKA_PORT=${KAFKA_PORT:-9092}
BROKER_STORAGE=${BROKER_STORAGE:-sqlite}
TOOLS_DIR=${TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/backbone}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SELF=$ROOT/deploy/stack.sh
PROBE=$ROOT/deploy/broker-probe.py
STATE_DIR=${STATE_DIR:-$ROOT/.stack}
TANSU=$TOOLS_DIR/tansu-$TANSU_VERSION/bin/tansu
BROKER_PROBE_INTERVAL=${BROKER_PROBE_INTERVAL:-2}
BROKER_PROBE_TIMEOUT=${BROKER_PROBE_TIMEOUT:-3}
BROKER_PROBE_FAILURES=${BROKER_PROBE_FAILURES:-3}
BROKER_START_TIMEOUT=${BROKER_START_TIMEOUT:-60}
BROKER_STOP_GRACE=${BROKER_STOP_GRACE:-5}
BROKER_OWNER_PID=${BROKER_OWNER_PID:-}

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

storage_url() {
  case "$BROKER_STORAGE" in
    memory) echo "memory://tansu/" ;;
    sqlite) echo "sqlite://tansu.db" ;;
    *) log "BROKER_STORAGE must be memory or sqlite"; return 1 ;;
  esac
}

# Exit 0 when the broker answers a Kafka Metadata request; otherwise the reason on stderr.
probe() { python3 "$PROBE" "127.0.0.1:$KAFKA_PORT" --timeout "${1:-$BROKER_PROBE_TIMEOUT}"; }

# A running process: not gone, and not a zombie waiting for its parent (or init) to reap it.
alive() {
  local stat
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

read_pid() {
  local pid=""
  [ -f "$1" ] && read -r pid <"$1" 2>/dev/null
  case "$pid" in '' | *[!0-9]*) ;; *) echo "$pid" ;; esac
}

cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

is_supervisor() {
  alive "${1:-}" || return 1
  case "$(cmdline "$1")" in *"stack.sh supervise"*) return 0 ;; *) return 1 ;; esac
}

is_tansu() {
  alive "${1:-}" || return 1
  case "$(cmdline "$1")" in *"/tansu broker "*) return 0 ;; *) return 1 ;; esac
}

# tansu processes running in a state directory's broker/ (also finds a broker started by an
# older version of this script, whose pid file held the wrong pid).
tansu_pids_in() {
  local p
  [ -d "$1" ] || return 0
  for p in /proc/[0-9]*; do
    [ "$p/cwd" -ef "$1" ] && is_tansu "${p#/proc/}" && echo "${p#/proc/}"
  done
  return 0
}

# TERM (and CONT, so that a stopped process handles it), then KILL after BROKER_STOP_GRACE s.
stop_pid() {
  local pid=$1
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  kill -CONT "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((BROKER_STOP_GRACE * 10))); do
    alive "$pid" || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    alive "$pid" || return 0
    sleep 0.1
  done
}

# The supervisor: runs detached (see start_broker), logs to broker.log, never returns.
supervise() {
  set +e
  local storage tansu_pid="" failures=0 reason="" sleeper="" status
  storage=$(storage_url) || exit 1
  cd "$STATE_DIR/broker" || exit 1
  # Whatever else the caller had open (a pipe it reads to the end, make's jobserver) is not
  # for tansu to inherit. 255 is bash's own.
  local fd
  for fd in "/proc/$$/fd"/*; do
    fd=${fd##*/}
    case "$fd" in 0 | 1 | 2 | 255) ;; *) eval "exec $fd>&-" ;; esac
  done
  echo $$ >"$STATE_DIR/broker.pid.$$" && mv -f "$STATE_DIR/broker.pid.$$" "$STATE_DIR/broker.pid"

  slog() { printf '[supervisor] %s broker on :%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$KAFKA_PORT" "$*"; }
  snooze() { sleep "$1" & sleeper=$!; wait "$sleeper"; sleeper=""; }
  spawn() {
    "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "$storage" &
    tansu_pid=$!
    echo "$tansu_pid" >"$STATE_DIR/tansu.pid"
    failures=0
  }
  # A fresh broker opens its port once its storage is ready: up to BROKER_START_TIMEOUT for
  # that, before failed probes count.
  settle() {
    local deadline=$((SECONDS + BROKER_START_TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ] && alive "$tansu_pid"; do
      listening "$KAFKA_PORT" && return 0
      snooze 0.2
    done
    return 1
  }
  finish() {
    trap - TERM INT HUP
    [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
    slog "stopping (pid $tansu_pid)"
    stop_pid "$tansu_pid"
    rm -f "$STATE_DIR/tansu.pid"
    [ "$(read_pid "$STATE_DIR/broker.pid")" = "$$" ] && rm -f "$STATE_DIR/broker.pid"
    slog "stopped"
    exit 0
  }
  trap finish TERM INT HUP

  spawn
  slog "started (pid $tansu_pid, $BROKER_STORAGE storage, supervisor pid $$)"
  settle
  while :; do
    snooze "$BROKER_PROBE_INTERVAL"
    if [ -n "$BROKER_OWNER_PID" ] && ! alive "$BROKER_OWNER_PID"; then
      slog "owner process $BROKER_OWNER_PID is gone"
      finish
    fi
    if [ ! -d "$STATE_DIR/broker" ]; then
      slog "state directory $STATE_DIR is gone"
      finish
    fi
    if ! alive "$tansu_pid"; then
      wait "$tansu_pid"
      status=$?
      slog "exited (status $status); restarting"
      spawn
      slog "restarted (pid $tansu_pid)"
      settle
      continue
    fi
    if reason=$(probe 2>&1 >/dev/null); then
      failures=0
      continue
    fi
    failures=$((failures + 1))
    [ "$failures" -lt "$BROKER_PROBE_FAILURES" ] && continue
    slog "failed $failures probes (${reason#broker-probe: }); restarting"
    stop_pid "$tansu_pid"
    wait "$tansu_pid" 2>/dev/null
    spawn
    slog "restarted (pid $tansu_pid)"
    settle
  done
}

start_broker() {
  if listening "$KAFKA_PORT"; then log "broker already listening on :$KAFKA_PORT"; return; fi
  storage_url >/dev/null || exit 1
  command -v python3 >/dev/null || { log "installing python3"; apt_install python3; }
  ensure_tansu
  mkdir -p "$STATE_DIR/broker"
  STATE_DIR=$(cd "$STATE_DIR" && pwd)
  local sup
  sup=$(read_pid "$STATE_DIR/broker.pid")
  if is_supervisor "$sup"; then
    log "supervisor already running (pid $sup); waiting for the broker on :$KAFKA_PORT"
  else
    rm -f "$STATE_DIR/broker.pid" "$STATE_DIR/tansu.pid"
    if [ -f "$STATE_DIR/broker.log" ]; then mv -f "$STATE_DIR/broker.log" "$STATE_DIR/broker.log.1"; fi
    log "starting tansu ($BROKER_STORAGE) on :$KAFKA_PORT under a supervisor; log in $STATE_DIR/broker.log"
    # Detached: its own session, no terminal, and none of the caller's descriptors, so that
    # `out=$(deploy/stack.sh up)` returns.
    env KAFKA_PORT="$KAFKA_PORT" BROKER_STORAGE="$BROKER_STORAGE" STATE_DIR="$STATE_DIR" \
      TOOLS_DIR="$TOOLS_DIR" BROKER_PROBE_INTERVAL="$BROKER_PROBE_INTERVAL" \
      BROKER_PROBE_TIMEOUT="$BROKER_PROBE_TIMEOUT" BROKER_PROBE_FAILURES="$BROKER_PROBE_FAILURES" \
      BROKER_START_TIMEOUT="$BROKER_START_TIMEOUT" BROKER_STOP_GRACE="$BROKER_STOP_GRACE" \
      BROKER_OWNER_PID="$BROKER_OWNER_PID" \
      setsid -f "$SELF" supervise </dev/null >>"$STATE_DIR/broker.log" 2>&1
  fi
  local deadline=$((SECONDS + BROKER_START_TIMEOUT)) reason=""
  while :; do
    if reason=$(probe 2 2>&1 >/dev/null); then
      log "broker answers on :$KAFKA_PORT (supervisor pid $(read_pid "$STATE_DIR/broker.pid"), tansu pid $(read_pid "$STATE_DIR/tansu.pid"))"
      return 0
    fi
    sup=$(read_pid "$STATE_DIR/broker.pid")
    if [ -n "$sup" ] && ! is_supervisor "$sup"; then reason="the supervisor exited"; break; fi
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.2
  done
  log "the broker on :$KAFKA_PORT did not answer within ${BROKER_START_TIMEOUT}s (${reason#broker-probe: }); last lines of $STATE_DIR/broker.log:"
  tail -n 20 "$STATE_DIR/broker.log" >&2 || true
  stop_broker
  exit 1
}

# Stops the supervisor, then any tansu of this state directory it leaves behind.
stop_broker() {
  [ -d "$STATE_DIR" ] || return 0
  STATE_DIR=$(cd "$STATE_DIR" && pwd)
  local sup pid stopped="" probe_s=${BROKER_PROBE_TIMEOUT%%.*}
  sup=$(read_pid "$STATE_DIR/broker.pid")
  if is_supervisor "$sup"; then
    # It finishes a probe in progress first, then stops tansu.
    kill -TERM "$sup" 2>/dev/null || true
    for _ in $(seq 1 $(((BROKER_STOP_GRACE + ${probe_s:-0} + 6) * 10))); do
      alive "$sup" || break
      sleep 0.1
    done
    if alive "$sup"; then kill -KILL "$sup" 2>/dev/null || true; fi
    stopped=1
  fi
  for pid in $(read_pid "$STATE_DIR/tansu.pid") $(tansu_pids_in "$STATE_DIR/broker"); do
    if is_tansu "$pid"; then stop_pid "$pid"; stopped=1; fi
  done
  rm -f "$STATE_DIR/broker.pid" "$STATE_DIR/tansu.pid"
  [ -n "$stopped" ] || return 0
  for _ in $(seq 1 50); do
    listening "$KAFKA_PORT" || break
    sleep 0.1
  done
  if listening "$KAFKA_PORT"; then
    log "broker stopped, but something still listens on :$KAFKA_PORT"
  else
    log "broker stopped"
  fi
}

broker_status() {
  local reason sup tpid procs=""
  sup=$(read_pid "$STATE_DIR/broker.pid")
  tpid=$(read_pid "$STATE_DIR/tansu.pid")
  if is_supervisor "$sup"; then procs=" (supervisor pid $sup, tansu pid ${tpid:-none})"; fi
  if reason=$(probe 2>&1 >/dev/null); then
    log "broker up on :$KAFKA_PORT, answers Metadata$procs"
  elif listening "$KAFKA_PORT"; then
    log "broker listens on :$KAFKA_PORT but does not answer: ${reason#broker-probe: }$procs"
  else
    log "broker down$procs"
  fi
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
  up-broker) start_broker ;;
  supervise) supervise ;;
  down) stop_broker ;;
  status)
    broker_status
    for p in 5432:PostgreSQL 6379:Redis; do
      if listening "${p%%:*}"; then log "${p#*:} up on :${p%%:*}"; else log "${p#*:} down"; fi
    done
    ;;
  *) echo "usage: $0 up|up-broker|down|status" >&2; exit 2 ;;
esac
