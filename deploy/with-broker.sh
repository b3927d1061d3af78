#!/usr/bin/env bash
# Runs a command against a fresh broker of its own:
#
#   deploy/with-broker.sh cargo test -p backbone-tests --test e2e
#
# Starts a supervised tansu (sqlite storage, see deploy/stack.sh) on a free port in
# 20000-29999 with a new state directory under mktemp -d, runs the command with
# KAFKA_BROKERS=127.0.0.1:<port> (and BROKER_STATE_DIR=<that directory>) in its environment,
# then stops the broker and its supervisor and removes the directory, also when the command
# fails or the wrapper is interrupted. Exits with the command's status.
#
# The command runs in the foreground, so Ctrl-C reaches it directly. Should the wrapper itself
# be killed with SIGKILL, the supervisor notices within a probe interval that its owner is
# gone and stops the broker (the directory is then left behind in $TMPDIR).
set -euo pipefail

if [ $# -eq 0 ]; then
  echo "usage: $0 <command> [args...]" >&2
  exit 2
fi

HERE=$(cd "$(dirname "$0")" && pwd)
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

state=$(mktemp -d "${TMPDIR:-/tmp}/backbone-broker.XXXXXX")
port=""

# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local status=$?
  trap - EXIT INT TERM HUP
  if [ -n "$port" ]; then
    STATE_DIR=$state KAFKA_PORT=$port "$HERE/stack.sh" down >&2 || true
  fi
  rm -rf "$state"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

started=""
for _ in $(seq 1 20); do
  port=$((20000 + RANDOM % 10000))
  listening "$port" && continue
  STATE_DIR=$state KAFKA_PORT=$port BROKER_STORAGE=sqlite BROKER_OWNER_PID=$$ \
    "$HERE/stack.sh" up-broker >&2
  # up-broker does nothing when something else took the port meanwhile: only a tansu
  # recorded in this state directory counts.
  if [ -s "$state/tansu.pid" ]; then
    started=1
    break
  fi
done
if [ -z "$started" ]; then
  echo "with-broker: found no free port for a broker" >&2
  exit 1
fi

export KAFKA_BROKERS=127.0.0.1:$port BROKER_STATE_DIR=$state
echo "with-broker: fresh broker on $KAFKA_BROKERS for: ${*%%$'\n'*}" >&2
status=0
"$@" || status=$?
exit "$status"
