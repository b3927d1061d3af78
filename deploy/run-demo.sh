#!/usr/bin/env bash
# `make run`: crm-sim, crm-sync, gift-certificates and the operator console on the local stack. Demo events in, then
# what reached the CRM and the log; then a batch of gift certificates loaded with batch-loader,
# one activated, held, captured and read back. Runs until Ctrl-C (or exits after the report with
# DEMO_EXIT=1, or when standard input is not a terminal).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STATE_DIR=${STATE_DIR:-$ROOT/.stack}
mkdir -p "$STATE_DIR"
DB_URL=${CRM_SYNC_POSTGRES__URL:-postgres://postgres:postgres@127.0.0.1:5432/crm_sync}

cargo build --quiet -p crm-sync -p crm-sim -p backbone-bench -p gift-certificates -p batch-loader -p operator-console --bins

# Fresh secrets for this run only: never written to disk, never printed.
TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
SECRET=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# Background services run in their own session (setsid) without the terminal's input, so that
# Ctrl-C reaches only this script, which stops them with SIGTERM.
CRM_SIM_TOKEN=$TOKEN CRM_SIM_SIGNING_SECRET=$SECRET RUST_LOG=warn \
  setsid target/debug/crm-sim --listen 127.0.0.1:8081 </dev/null >"$STATE_DIR/crm-sim.log" 2>&1 &
pids+=($!)

# VENDOR=bitrix24|salesforce|kommo make run: crm-sync speaks that vendor's dialect to crm-sim.
VENDOR=${VENDOR:-generic}
case "$VENDOR" in
  generic) CRM_SYNC_CONFIG=config/crm-sync.local.toml; STATS_PATH=/sim/stats ;;
  bitrix24|salesforce|kommo) CRM_SYNC_CONFIG=config/crm-sync.$VENDOR.local.toml; STATS_PATH=/sim/vendors/$VENDOR/stats ;;
  *) echo "VENDOR must be generic, bitrix24, salesforce or kommo" >&2; exit 2 ;;
esac
# The two-way API's token and the webhook credentials crm-sim's webhooks carry, for this run only.
API_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
# The admin APIs' tokens, for the operator console of this run.
CRM_ADMIN_TOKEN=$(head -c 32 /dev/urandom | base64 | tr -d '/+=\n')
GC_ADMIN_TOKEN=$(head -c 32 /dev/urandom | base64 | tr -d '/+=\n')
CONSOLE_API_TOKEN=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
HOOK_SECRET=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
case "$VENDOR" in
  generic) hook_env=(CRM_SYNC_TWO_WAY__WEBHOOKS__GENERIC__SECRET=$HOOK_SECRET)
    hook_target="{\"url\": \"http://127.0.0.1:8090/webhooks/generic\", \"secret\": \"$HOOK_SECRET\"}" ;;
  bitrix24) hook_env=(CRM_SYNC_TWO_WAY__WEBHOOKS__BITRIX24__APPLICATION_TOKENS__DEMOPORTAL=$HOOK_SECRET)
    hook_target="{\"url\": \"http://127.0.0.1:8090/webhooks/bitrix24\", \"member_id\": \"demoportal\", \"application_token\": \"$HOOK_SECRET\", \"domain\": \"demo.bitrix24.test\"}" ;;
  kommo) hook_env=(CRM_SYNC_TWO_WAY__WEBHOOKS__KOMMO__PATH_SECRET=$HOOK_SECRET "CRM_SYNC_TWO_WAY__WEBHOOKS__KOMMO__ACCOUNT_ID=\"7039099\"")
    hook_target="{\"url\": \"http://127.0.0.1:8090/webhooks/kommo/$HOOK_SECRET\", \"account_id\": 7039099, \"subdomain\": \"demo\"}" ;;
  salesforce) hook_env=(CRM_SYNC_TWO_WAY__WEBHOOKS__SALESFORCE__PATH_SECRET=$HOOK_SECRET CRM_SYNC_TWO_WAY__WEBHOOKS__SALESFORCE__ORGANIZATION_ID=00D000000000001AAA)
    hook_target="{\"url\": \"http://127.0.0.1:8090/webhooks/salesforce/$HOOK_SECRET\", \"organization_id\": \"00D000000000001AAA\"}" ;;
esac
CRM_SYNC_CRM__GENERIC__TOKEN=$TOKEN CRM_SYNC_CRM__GENERIC__SIGNING_SECRET=$SECRET \
CRM_SYNC_CRM__BITRIX24__WEBHOOK_TOKEN=$TOKEN CRM_SYNC_CRM__SALESFORCE__CLIENT_SECRET=$TOKEN \
CRM_SYNC_CRM__KOMMO__ACCESS_TOKEN=$TOKEN \
CRM_SYNC_TWO_WAY__API__TOKENS__DEMO=$API_TOKEN CRM_SYNC_TWO_WAY__API__TOKENS__OPERATOR_CONSOLE=$CONSOLE_API_TOKEN \
CRM_SYNC_HTTP__ADMIN_TOKEN=$CRM_ADMIN_TOKEN \
CRM_SYNC_POSTGRES__URL=$DB_URL RUST_LOG=${RUST_LOG:-info} \
  env "${hook_env[@]}" setsid target/debug/crm-sync --config "$CRM_SYNC_CONFIG" </dev/null >"$STATE_DIR/crm-sync.log" 2>&1 &
crm_sync_pid=$!
pids+=("$crm_sync_pid")

# gift-certificates: a fresh token per channel for this run (no configuration file ships any),
# written to a git-ignored file for calling the API by hand; master key created once.
GC_CONFIG=config/gift-certificates.local.toml
GC_URL=http://127.0.0.1:8088
GC_KEY_FILE=.stack/keys/master.key # keys.key_file of $GC_CONFIG
GC_TOKENS=$STATE_DIR/gift-certificates.tokens
[ -f "$GC_KEY_FILE" ] || target/debug/gift-certificates keys generate --out "$GC_KEY_FILE"
gc_tokens=()
(umask 077 && : >"$GC_TOKENS") && chmod 600 "$GC_TOKENS"
for channel in ONLINESTORE POS PAYMENTS BATCHLOADER INTERNAL; do
  value=$(head -c 32 /dev/urandom | base64 | tr -d '/+=\n')
  printf -v "GC_TOKEN_$channel" '%s' "$value"
  gc_tokens+=("GIFT_CERTIFICATES_TOKENS__$channel=$value")
  echo "GIFT_CERTIFICATES_TOKENS__$channel=$value" >>"$GC_TOKENS"
done
env "${gc_tokens[@]}" GIFT_CERTIFICATES_ADMIN__TOKEN="$GC_ADMIN_TOKEN" RUST_LOG="${RUST_LOG:-info}" \
  setsid target/debug/gift-certificates --config "$GC_CONFIG" </dev/null >"$STATE_DIR/gift-certificates.log" 2>&1 &
gc_pid=$!
pids+=("$gc_pid")

# wait_ready NAME URL PID LOG
wait_ready() {
  for _ in $(seq 1 150); do
    curl -fs "$2" >/dev/null 2>&1 && return 0
    kill -0 "$3" 2>/dev/null || { echo "$1 failed to start:"; tail -n 20 "$4"; exit 1; }
    sleep 0.2
  done
  echo "$1 is not ready after 30 s:"; tail -n 20 "$4"; exit 1
}

wait_ready crm-sync http://127.0.0.1:9464/health/ready "$crm_sync_pid" "$STATE_DIR/crm-sync.log"
echo "crm-sync is ready (metrics: http://127.0.0.1:9464/metrics, logs: $STATE_DIR/crm-sync.log)"

target/debug/tracking-feed --brokers 127.0.0.1:9092 --topic tracking.events --shipments 20
sleep 5

echo
echo "== What reached the CRM (crm-sim, $VENDOR dialect) =="
curl -fs "http://127.0.0.1:8081$STATS_PATH" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("writes: %d, requests: %d, repeated writes acknowledged without effect: %d"
      % (s["total_writes"], s["requests"], s["duplicate_writes"]))
for k, v in sorted(s["writes_per_shipment"].items())[-8:]:
    print(f"  {k}: {v} write(s)")'
echo
echo "== Outcomes (integrations_log) =="
psql -X -q -P pager=off "$DB_URL" -c "SELECT outcome, count(*) FROM integrations_log WHERE sent_at > now() - interval '2 minutes' GROUP BY outcome ORDER BY 2 DESC"
psql -X -q -P pager=off "$DB_URL" -c "SELECT sent_at::time(0) AS at, event_id, shipment_id, outcome, attempt, http_status AS http, left(coalesce(error, ''), 50) AS error FROM integrations_log WHERE sent_at > now() - interval '2 minutes' ORDER BY id DESC LIMIT 12"

echo
echo "== Two-way sync: client cards (API http://127.0.0.1:8090, docs/two-way-sync.md) =="
TWO_WAY_TOKEN_FILE=$STATE_DIR/crm-sync-two-way.token # for calling the API by hand
(umask 077 && printf 'CRM_SYNC_TWO_WAY__API__TOKENS__DEMO=%s\n' "$API_TOKEN" >"$TWO_WAY_TOKEN_FILE")
echo "the API's token of this run (caller demo): $TWO_WAY_TOKEN_FILE"
curl -fsS -X PUT "http://127.0.0.1:8081/sim/webhooks/$VENDOR" -H 'content-type: application/json' \
  -d "$hook_target" >/dev/null
CLIENT=demo-$(date -u +%H%M%S)
API_TOKEN=$API_TOKEN SIM=http://127.0.0.1:8081 VENDOR=$VENDOR CLIENT=$CLIENT python3 - <<'PY'
import json, os, sys, time, urllib.request

api, sim, vendor, client = "http://127.0.0.1:8090", os.environ["SIM"], os.environ["VENDOR"], os.environ["CLIENT"]

def call(method, url, body=None, headers=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")

def ours(method, path, body=None, key=None):
    h = {"authorization": "Bearer " + os.environ["API_TOKEN"]}
    if key:
        h["idempotency-key"] = key
    return call(method, api + path, body, h)

def theirs():
    s, found = call("GET", f"{sim}/sim/{vendor}/contacts?external_id={client}")
    return found if s == 200 else None

def wait(what, check, within=30):
    start = time.time()
    while time.time() - start < within:
        v = check()
        if v:
            return v
        time.sleep(0.3)
    sys.exit(f"two-way demo: {what} did not happen within {within} s")

card = {"fields": {"first_name": "Ada", "last_name": "Lovelace", "phone": "+79991234567",
                   "email": "ada@example.com", "segment": "regular", "consent_sms": True, "consent_email": False}}
s, b = ours("PUT", f"/v1/clients/{client}", card, key=f"{client}-create")
print(f"  PUT /v1/clients/{client}: HTTP {s}, version {b.get('version') if b else None}")
c = wait("the card reaching the CRM", lambda: (t := theirs()) and t.get("first_name") == "Ada" and t)
print(f"  in the CRM as {c['crm_id']}: {c['first_name']} {c['last_name']}, {c['phone']}, segment {c['segment']}")
manager = "005SIM000000009AAA" if vendor == "salesforce" else "9"
call("PATCH", f"{sim}/sim/{vendor}/contacts/{c['crm_id']}", {"manager": manager})
print(f"  a CRM user sets the manager to {manager}; its webhook comes back to crm-sync")
got = wait("the CRM's manager reaching our copy",
           lambda: (r := ours("GET", f"/v1/clients/{client}"))[0] == 200 and r[1]["fields"].get("manager") == manager and r[1])
print(f"  our copy now: manager {got['fields']['manager']}, version {got['version']}")
s, tasks = ours("GET", "/v1/operator-tasks?state=open")
print(f"  open operator tasks (conflicts): {len(tasks['tasks'])}")
PY
curl -fs http://127.0.0.1:9464/metrics | grep -E '^crm_sync_two_way_(dispatched|processed)_total' || true

echo
echo "== gift-certificates =="
wait_ready gift-certificates "$GC_URL/health/ready" "$gc_pid" "$STATE_DIR/gift-certificates.log"
echo "gift-certificates is ready (API and metrics: $GC_URL, logs: $STATE_DIR/gift-certificates.log)"
echo "channel tokens of this run (GIFT_CERTIFICATES_TOKENS__<CHANNEL>=<token>): $GC_TOKENS"

gc_token() { # the channel's token of this run
  local name="GC_TOKEN_${1^^}"
  printf '%s' "${!name}"
}
DEMO_DIR=$STATE_DIR/demo
mkdir -p "$DEMO_DIR"
RUN_ID=$(date -u +%Y%m%d%H%M%S)
BATCH_FILE=$DEMO_DIR/gift-$RUN_ID.csv

# gc_call STEP EXPECTED_STATUS METHOD PATH CHANNEL [curl args...]: prints one line per call.
gc_call() {
  local step=$1 expected=$2 method=$3 path=$4 channel=$5 status
  shift 5
  status=$(curl -sS -X "$method" "$GC_URL$path" -H "authorization: Bearer $(gc_token "$channel")" \
    -H 'content-type: application/json' -D "$DEMO_DIR/headers" -o "$DEMO_DIR/body" -w '%{http_code}' "$@")
  if [ "$status" != "$expected" ]; then
    echo "$step: HTTP $status, expected $expected:"; cat "$DEMO_DIR/body"; echo; exit 1
  fi
  python3 - "$step" "$status" "$DEMO_DIR/body" "$DEMO_DIR/headers" <<'PY'
import json, sys
step, status, body, headers = sys.argv[1:5]
b = json.load(open(body))
replayed = "idempotent-replayed: true" in open(headers).read().lower()
keys = ["action", "operation_id", "amount_minor", "state", "balance_minor", "available_minor"]
print(f"  {step:<22} HTTP {status}{' (replayed)' if replayed else ''}: "
      + ", ".join(f"{k}={b[k]}" for k in keys if b.get(k) is not None))
PY
}

target/debug/batch-loader generate --count 5 --nominal 500000 --currency RUB --out "$BATCH_FILE"
BATCH_LOADER_TOKEN=$(gc_token BatchLoader) target/debug/batch-loader load "$BATCH_FILE" \
  --batch-id "demo-$RUN_ID" --via http --url "$GC_URL" --progress off
read -r CODE CVC < <(python3 -c 'import csv, sys; r = next(csv.DictReader(open(sys.argv[1]))); print(r["code"], r["cvc"])' "$BATCH_FILE")
rm -f "$BATCH_FILE" "$BATCH_FILE".* # the file holds codes and CVCs in clear
echo "certificate ****-****-****-${CODE: -4} (5,000.00 RUB):"

gc_call activate 200 POST "/certificates/$CODE/activate" Payments \
  -H "idempotency-key: demo-$RUN_ID-activate" -d "{\"order_id\": \"demo-order-$RUN_ID\", \"client_id\": \"demo-client\"}"
gc_call "authorize 1,500.00" 201 POST "/certificates/$CODE/authorize" POS \
  -H "idempotency-key: demo-$RUN_ID-authorize" -d "{\"amount_minor\": 150000, \"currency\": \"RUB\", \"cvc\": \"$CVC\"}"
HOLD=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["operation_id"])' "$DEMO_DIR/body")
for _ in 1 2; do # the second call repeats the first with the same Idempotency-Key
  gc_call "capture 1,200.00" 200 POST "/certificates/$CODE/capture" POS \
    -H "idempotency-key: demo-$RUN_ID-capture" -d "{\"hold_id\": \"$HOLD\", \"amount_minor\": 120000, \"currency\": \"RUB\"}"
done
gc_call balance 200 GET "/certificates/$CODE/balance" POS -H "x-certificate-cvc: $CVC"
gc_call view 200 GET "/certificates/$CODE" internal
echo "GET /certificates/{code}:"
python3 -m json.tool "$DEMO_DIR/body"
rm -f "$DEMO_DIR/body" "$DEMO_DIR/headers"
sleep 1
curl -fs "$GC_URL/metrics" | grep -E '^gift_certificates_(outbox_pending|outbox_published_total|issued_total)' || true

echo
echo "== Operator console =="
# A demo admin with a fresh password for this run; the password hash goes into a git-ignored
# configuration file only this user can read.
CONSOLE_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=\n')
CONSOLE_CONFIG=$STATE_DIR/operator-console.toml
(umask 077 && { cat config/operator-console.local.toml; printf '\n[[users]]\nname = "demo"\nrole = "admin"\npassword_hash = "%s"\n' \
  "$(printf '%s\n' "$CONSOLE_PASSWORD" | target/debug/operator-console hash-password)"; } >"$CONSOLE_CONFIG")
OPERATOR_CONSOLE_CRM_SYNC__ADMIN_TOKEN=$CRM_ADMIN_TOKEN \
OPERATOR_CONSOLE_CRM_SYNC_TWO_WAY__ADMIN_TOKEN=$CONSOLE_API_TOKEN \
OPERATOR_CONSOLE_GIFT_CERTIFICATES__ADMIN_TOKEN=$GC_ADMIN_TOKEN RUST_LOG="${RUST_LOG:-info}" \
  setsid target/debug/operator-console --config "$CONSOLE_CONFIG" </dev/null >"$STATE_DIR/operator-console.log" 2>&1 &
console_pid=$!
pids+=("$console_pid")
wait_ready operator-console http://127.0.0.1:8095/health/ready "$console_pid" "$STATE_DIR/operator-console.log"
echo "operator console: http://127.0.0.1:8095  (log in as demo / $CONSOLE_PASSWORD, role admin; logs: $STATE_DIR/operator-console.log)"

if [ -n "${DEMO_EXIT:-}" ] || [ ! -t 0 ]; then exit 0; fi
echo "Running. Send more with: target/debug/tracking-feed; gift-certificates API on $GC_URL"
echo "(docs/gift-certificates.md); two-way API on http://127.0.0.1:8090 (docs/two-way-sync.md);"
echo "operator console on http://127.0.0.1:8095 (docs/operator-console.md)."
echo "Stop with Ctrl-C."
wait
