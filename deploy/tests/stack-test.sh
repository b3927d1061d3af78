#!/usr/bin/env bash
# Regression tests for the broker scripts: deploy/stack.sh's supervisor and deploy/with-broker.sh.
# Each test starts tansu on a private port with a private state directory and removes both,
# and every process it started, when it ends (also when it fails). Needs tansu installed
# (deploy/stack.sh up does that) and, for `up`, PostgreSQL and Redis (started if missing).
#
#   deploy/tests/stack-test.sh [test name...]
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
STACK=$ROOT/deploy/stack.sh
WITH_BROKER=$ROOT/deploy/with-broker.sh
PROBE=$ROOT/deploy/broker-probe.py

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# A running process: not gone, and not a zombie waiting for its parent (or init) to reap it.
alive() {
  local stat
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
fail() { echo "  FAIL: $*" >&2; exit 1; }
note() { echo "  $*" >&2; }

free_port() {
  local port
  while :; do
    port=$((30000 + RANDOM % 2000))
    listening "$port" || { echo "$port"; return; }
  done
}

# Every process whose working directory is inside $1 (a broker's and its supervisor's are).
procs_in() {
  local dir p cwd
  dir=$(cd "$1" 2>/dev/null && pwd -P) || return 0
  for p in /proc/[0-9]*; do
    cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
    case "$cwd" in "$dir" | "$dir"/*) echo "${p#/proc/}" ;; esac
  done
}

# Kills what a test left behind: the processes in its directory and the pids given.
reap() {
  local dir=$1 pid
  shift
  # shellcheck disable=SC2046 # pids, one a word
  for pid in $(printf '%s\n' "$@" $(procs_in "$dir") | sort -un); do
    if alive "$pid"; then
      note "cleanup: killing leftover process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null))"
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  rm -rf "$dir"
}

failed_log() { # status, log
  [ "$1" = 0 ] || [ ! -f "$2" ] || { note "last lines of $2:"; tail -n 15 "$2" | sed 's/^/    /' >&2; }
}

wait_until() { # seconds, command...
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

answers() { python3 "$PROBE" "127.0.0.1:$1" --timeout "${2:-3}" 2>/dev/null; }

gone() {
  local pid
  for pid in "$@"; do alive "$pid" && return 1; done
  return 0
}

# A new tansu pid recorded in $state/tansu.pid (sets t2), and the broker answers.
restarted() {
  t2=$(cat "$state/tansu.pid" 2>/dev/null)
  [ -n "$t2" ] && [ "$t2" != "$t1" ] && answers "$port" 2
}

# (a) A broker that keeps listening but answers nothing (SIGSTOP: what a wedged tansu looks
# like from outside) is restarted by the supervisor; `up` returns without holding stdout; `down`
# stops everything and frees the port.
test_supervisor_restarts_silent_broker() {
  # Not local: the EXIT trap of the test's subshell uses them.
  dir=$(mktemp -d)
  port=$(free_port)
  state=$dir/state
  trap 'failed_log $? "$state/broker.log"; reap "$dir" "${sup:-}" "${t1:-}" "${t2:-}"' EXIT
  export STATE_DIR=$state KAFKA_PORT=$port BROKER_STORAGE=sqlite BROKER_PROBE_INTERVAL=1

  # Command substitution waits for every holder of its pipe: a broker that inherited stdout
  # keeps it waiting after up has finished.
  # shellcheck disable=SC2016 # expanded by the inner shell
  timeout 120 bash -c 'out=$("$1" up 2>"$2/up.err"); echo "$out"' _ "$STACK" "$dir" >"$dir/up.out" \
    || fail "out=\$(stack.sh up) did not return within 120 s (status $?); stderr: $(tail -n 5 "$dir/up.err")"
  answers "$port" || fail "the broker does not answer after up"
  sup=$(cat "$state/broker.pid" 2>/dev/null)
  t1=$(cat "$state/tansu.pid" 2>/dev/null)
  alive "$sup" || fail "broker.pid ($sup) is not a running process"
  alive "$t1" || fail "tansu.pid ($t1) is not a running process"
  [ "$sup" != "$t1" ] || fail "broker.pid and tansu.pid are the same process"
  tr '\0' ' ' <"/proc/$t1/cmdline" | grep -q "tansu broker" || fail "tansu.pid ($t1) is not tansu"
  note "up: supervisor $sup, tansu $t1 on :$port"

  kill -STOP "$t1"
  listening "$port" || fail "a stopped tansu should still accept connections"
  if answers "$port" 1; then fail "the probe succeeded against a stopped broker"; fi
  note "tansu $t1 stopped: listens, probe fails"

  wait_until 30 restarted || fail "no restarted, answering broker within 30 s (tansu.pid: ${t2:-none})"
  note "restarted as tansu $t2 after $SECONDS s of test time"
  grep -q "^\[supervisor\] .* broker on :$port failed 3 probes (.*); restarting" "$state/broker.log" \
    || fail "no 'failed 3 probes ...; restarting' line in broker.log"
  grep -q "^\[supervisor\] .* broker on :$port restarted (pid $t2)" "$state/broker.log" \
    || fail "no 'restarted (pid $t2)' line in broker.log"
  wait_until 10 gone "$t1" || fail "the stopped tansu $t1 is still there"
  alive "$sup" || fail "the supervisor $sup is gone"
  out=$("$STACK" status 2>&1)
  [[ "$out" == *"broker up on :$port, answers Metadata (supervisor pid $sup, tansu pid $t2)"* ]] \
    || fail "status does not report the answering broker: $out"

  timeout 60 "$STACK" down || fail "down failed or took over 60 s"
  if listening "$port"; then fail "port $port still listening after down"; fi
  if alive "$sup"; then fail "supervisor $sup still running after down"; fi
  if alive "$t2"; then fail "tansu $t2 still running after down"; fi
  [ -z "$(procs_in "$dir")" ] || fail "processes left in the state directory: $(procs_in "$dir" | tr '\n' ' ')"
  if [ -e "$state/broker.pid" ] || [ -e "$state/tansu.pid" ]; then fail "pid files left after down"; fi
}

# (b) with-broker.sh runs its command against a fresh broker on its own port, then stops it
# and removes its state directory, passing on the command's status; also when interrupted,
# and (through the supervisor) when the wrapper itself is killed.
# shellcheck disable=SC2016 # the single-quoted commands are expanded by the inner shell
test_with_broker() {
  # Not local: the EXIT trap of the test's subshell uses them.
  dir=$(mktemp -d)
  trap 'reap "$dir" "${w:-}"' EXIT
  export TMPDIR=$dir # with-broker's mktemp -d lands in here, so cleanup finds it

  record='echo "$KAFKA_BROKERS" >"$1/brokers.$2"; echo "$BROKER_STATE_DIR" >"$1/state.$2"
    cat "$BROKER_STATE_DIR/broker.pid" "$BROKER_STATE_DIR/tansu.pid" >"$1/pids.$2"'

  timeout 180 "$WITH_BROKER" bash -c "$record"'
    python3 "$3" "$KAFKA_BROKERS" 2>"$1/probe.err"; echo $? >"$1/probe.rc"' _ "$dir" 1 "$PROBE"
  rc=$?
  [ "$rc" = 0 ] || fail "with-broker.sh <passing command> exited $rc"
  brokers=$(cat "$dir/brokers.1")
  [[ "$brokers" =~ ^127\.0\.0\.1:(2[0-9]{4})$ ]] || fail "KAFKA_BROKERS inside was '$brokers'"
  port=${BASH_REMATCH[1]}
  [ "$(cat "$dir/probe.rc")" = 0 ] || fail "the broker did not answer inside the command: $(cat "$dir/probe.err")"
  state=$(cat "$dir/state.1")
  read -r sup tansu < <(tr '\n' ' ' <"$dir/pids.1")
  note "ran against $brokers (supervisor $sup, tansu $tansu, state $state)"
  [ ! -e "$state" ] || fail "state directory $state left behind"
  if alive "$sup" || alive "$tansu"; then fail "supervisor $sup or tansu $tansu still running"; fi
  if listening "$port"; then fail "port $port still listening afterwards"; fi

  timeout 180 "$WITH_BROKER" bash -c "$record"'; exit 7' _ "$dir" 2
  rc=$?
  [ "$rc" = 7 ] || fail "with-broker.sh <command exiting 7> exited $rc"
  state=$(cat "$dir/state.2")
  read -r sup tansu < <(tr '\n' ' ' <"$dir/pids.2")
  [ ! -e "$state" ] || fail "state directory $state left behind after a failing command"
  if alive "$sup" || alive "$tansu"; then fail "broker left running after a failing command"; fi
  note "a failing command: status 7 passed on, broker stopped, directory removed"

  # Interrupted: TERM to the wrapper's process group (the command and the wrapper).
  setsid "$WITH_BROKER" bash -c "$record"'; exec sleep 120' _ "$dir" 3 &
  w=$!
  wait_until 120 test -s "$dir/pids.3" || fail "the interrupted run's command did not start"
  kill -TERM -- "-$w"
  wait "$w"
  rc=$?
  [ "$rc" = 143 ] || fail "an interrupted with-broker.sh exited $rc, not 143"
  state=$(cat "$dir/state.3")
  read -r sup tansu < <(tr '\n' ' ' <"$dir/pids.3")
  [ ! -e "$state" ] || fail "state directory $state left behind after an interrupt"
  if alive "$sup" || alive "$tansu"; then fail "broker left running after an interrupt"; fi
  note "interrupted: broker stopped, directory removed"

  # Killed outright: nothing of the wrapper runs, its supervisor stops the broker.
  setsid "$WITH_BROKER" bash -c "$record"'; exec sleep 120' _ "$dir" 4 &
  w=$!
  wait_until 120 test -s "$dir/pids.4" || fail "the killed run's command did not start"
  read -r sup tansu < <(tr '\n' ' ' <"$dir/pids.4")
  kill -KILL -- "-$w"
  wait "$w" 2>/dev/null
  wait_until 20 gone "$sup" "$tansu" \
    || fail "supervisor $sup / tansu $tansu still running 20 s after their owner was killed"
  note "wrapper killed: its supervisor stopped the broker"
}

run() {
  local name=$1
  echo "--- $name" >&2
  if (set +e; "$name"); then
    echo "ok - $name"
    return 0
  fi
  echo "not ok - $name"
  return 1
}

tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(test_supervisor_restarts_silent_broker test_with_broker)
failed=0
for t in "${tests[@]}"; do run "$t" || failed=$((failed + 1)); done
echo "$((${#tests[@]} - failed)) passed, $failed failed"
[ "$failed" = 0 ]
