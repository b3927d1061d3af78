#!/usr/bin/env bash
# `make run`: crm-sim and crm-sync on the local stack, demo events in, then what reached the CRM
# and the log. Runs until Ctrl-C (or exits after the report with DEMO_EXIT=1).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STATE_DIR=${STATE_DIR:-$ROOT/.stack}
mkdir -p "$STATE_DIR"
DB_URL=${CRM_SYNC_POSTGRES__URL:-postgres://postgres:postgres@127.0.0.1:5432/crm_sync}

cargo build --quiet -p crm-sync -p crm-sim -p backbone-bench --bins

# Fresh secrets for this run only: never written to disk, never printed.
TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
SECRET=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

CRM_SIM_TOKEN=$TOKEN CRM_SIM_SIGNING_SECRET=$SECRET RUST_LOG=warn \
  target/debug/crm-sim --listen 127.0.0.1:8081 >"$STATE_DIR/crm-sim.log" 2>&1 &
pids+=($!)

CRM_SYNC_CRM__GENERIC__TOKEN=$TOKEN CRM_SYNC_CRM__GENERIC__SIGNING_SECRET=$SECRET \
CRM_SYNC_POSTGRES__URL=$DB_URL RUST_LOG=${RUST_LOG:-info} \
  target/debug/crm-sync --config config/crm-sync.local.toml >"$STATE_DIR/crm-sync.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 150); do
  curl -fs http://127.0.0.1:9464/health/ready >/dev/null 2>&1 && break
  kill -0 "${pids[1]}" 2>/dev/null || { echo "crm-sync failed to start:"; tail -n 20 "$STATE_DIR/crm-sync.log"; exit 1; }
  sleep 0.2
done
echo "crm-sync is ready (metrics: http://127.0.0.1:9464/metrics, logs: $STATE_DIR/crm-sync.log)"

target/debug/tracking-feed --brokers 127.0.0.1:9092 --topic tracking.events --shipments 20
sleep 5

echo
echo "== What reached the CRM (crm-sim) =="
curl -fs http://127.0.0.1:8081/sim/stats | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("writes: %d, requests: %d, repeated writes acknowledged without effect: %d"
      % (s["total_writes"], s["requests"], s["duplicate_writes"]))
for k, v in sorted(s["writes_per_shipment"].items())[-8:]:
    print(f"  {k}: {v} write(s)")'
echo
echo "== Outcomes (integrations_log) =="
psql -X -q "$DB_URL" -c "SELECT outcome, count(*) FROM integrations_log WHERE sent_at > now() - interval '2 minutes' GROUP BY outcome ORDER BY 2 DESC"
psql -X -q "$DB_URL" -c "SELECT sent_at::time(0) AS at, event_id, shipment_id, outcome, attempt, http_status AS http, left(coalesce(error, ''), 50) AS error FROM integrations_log WHERE sent_at > now() - interval '2 minutes' ORDER BY id DESC LIMIT 12"

if [ -n "${DEMO_EXIT:-}" ] || [ ! -t 0 ]; then exit 0; fi
echo "Running. Send more with: target/debug/tracking-feed; stop with Ctrl-C."
wait
