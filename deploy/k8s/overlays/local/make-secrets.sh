#!/usr/bin/env bash
# The local overlay's Secrets, with fresh random values (nothing secret is committed). Needs
# kubectl pointed at the local cluster, openssl, a gift-certificates binary for the master key
# (GIFT_CERTIFICATES_BIN, default target/debug/gift-certificates; `cargo build -p
# gift-certificates`) and an operator-console binary for the console user's password hash
# (OPERATOR_CONSOLE_BIN, default target/debug/operator-console). Existing Secrets are kept:
# delete them to start over (the admin tokens are added to existing ones that lack them).
set -euo pipefail
NS=${NS:-backbone-local}
ROOT=$(cd "$(dirname "$0")/../../../.." && pwd)
GC_BIN=${GIFT_CERTIFICATES_BIN:-$ROOT/target/debug/gift-certificates}
CONSOLE_BIN=${OPERATOR_CONSOLE_BIN:-$ROOT/target/debug/operator-console}
rand() { openssl rand -hex 24; }
exists() { kubectl -n "$NS" get secret "$1" >/dev/null 2>&1; }
# add_key SECRET KEY: a fresh random value under KEY, when the Secret lacks it.
add_key() {
  [ -n "$(kubectl -n "$NS" get secret "$1" -o "jsonpath={.data.$2}")" ] && return 0
  kubectl -n "$NS" patch secret "$1" --type merge -p "{\"stringData\":{\"$2\":\"$(rand)\"}}" >/dev/null
}

kubectl get namespace "$NS" >/dev/null 2>&1 || kubectl create namespace "$NS"
# The in-cluster PostgreSQL and Redis of backbone-infra (docs/deploy.md, "Local cluster").
PG=${PG_URL_BASE:-postgres://postgres:postgres@postgres.backbone-infra.svc:5432}
exists crm-sync || kubectl -n "$NS" create secret generic crm-sync \
  --from-literal=postgres-url="$PG/crm_sync" \
  --from-literal=crm-token="$(rand)" \
  --from-literal=crm-signing-secret="$(rand)" \
  --from-literal=kafka-properties='{}'
# The admin API's token and the console's two-way API token: crm-sync and the console read both.
add_key crm-sync admin-token
add_key crm-sync two-way-token-operator-console
exists crm-sync-keda || kubectl -n "$NS" create secret generic crm-sync-keda \
  --from-literal=sasl=none --from-literal=username= --from-literal=password= \
  --from-literal=tls=disable
exists gift-certificates || kubectl -n "$NS" create secret generic gift-certificates \
  --from-literal=postgres-url="$PG/gift_certificates" \
  --from-literal=redis-url="${REDIS_URL:-redis://redis.backbone-infra.svc:6379}" \
  --from-literal=kafka-properties='{}' \
  --from-literal=token-internal="$(rand)" \
  --from-literal=token-batchloader="$(rand)"
# The admin API's token: gift-certificates and the console read it.
add_key gift-certificates admin-token
if ! exists gift-certificates-keys; then
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  "$GC_BIN" keys generate --out "$dir/master.key"
  kubectl -n "$NS" create secret generic gift-certificates-keys --from-file=master.key="$dir/master.key"
fi
# The console's one user, `admin` (role admin), with a fresh password shown once here.
if ! exists operator-console; then
  password=$(openssl rand -base64 18)
  hash=$(printf '%s\n' "$password" | "$CONSOLE_BIN" hash-password)
  printf '[[users]]\nname = "admin"\nrole = "admin"\npassword_hash = "%s"\n' "$hash" \
    | kubectl -n "$NS" create secret generic operator-console --from-file=users.toml=/dev/stdin
  echo "operator console: log in as admin / $password (kubectl -n $NS port-forward svc/operator-console 8095)"
fi
echo "Secrets in $NS: crm-sync, crm-sync-keda, gift-certificates, gift-certificates-keys, operator-console"
