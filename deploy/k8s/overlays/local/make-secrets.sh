#!/usr/bin/env bash
# The local overlay's Secrets, with fresh random values (nothing secret is committed). Needs
# kubectl pointed at the local cluster, openssl, and a gift-certificates binary for the master
# key (GIFT_CERTIFICATES_BIN, default target/debug/gift-certificates; `cargo build -p
# gift-certificates`). Existing Secrets are kept: delete them to start over.
set -euo pipefail
NS=${NS:-backbone-local}
ROOT=$(cd "$(dirname "$0")/../../../.." && pwd)
GC_BIN=${GIFT_CERTIFICATES_BIN:-$ROOT/target/debug/gift-certificates}
rand() { openssl rand -hex 24; }
exists() { kubectl -n "$NS" get secret "$1" >/dev/null 2>&1; }

kubectl get namespace "$NS" >/dev/null 2>&1 || kubectl create namespace "$NS"
# The in-cluster PostgreSQL and Redis of backbone-infra (docs/deploy.md, "Local cluster").
PG=${PG_URL_BASE:-postgres://postgres:postgres@postgres.backbone-infra.svc:5432}
exists crm-sync || kubectl -n "$NS" create secret generic crm-sync \
  --from-literal=postgres-url="$PG/crm_sync" \
  --from-literal=crm-token="$(rand)" \
  --from-literal=crm-signing-secret="$(rand)" \
  --from-literal=kafka-properties='{}'
exists crm-sync-keda || kubectl -n "$NS" create secret generic crm-sync-keda \
  --from-literal=sasl=none --from-literal=username= --from-literal=password= \
  --from-literal=tls=disable
exists gift-certificates || kubectl -n "$NS" create secret generic gift-certificates \
  --from-literal=postgres-url="$PG/gift_certificates" \
  --from-literal=redis-url="${REDIS_URL:-redis://redis.backbone-infra.svc:6379}" \
  --from-literal=kafka-properties='{}' \
  --from-literal=token-internal="$(rand)" \
  --from-literal=token-batchloader="$(rand)"
if ! exists gift-certificates-keys; then
  dir=$(mktemp -d)
  trap 'rm -rf "$dir"' EXIT
  "$GC_BIN" keys generate --out "$dir/master.key"
  kubectl -n "$NS" create secret generic gift-certificates-keys --from-file=master.key="$dir/master.key"
fi
echo "Secrets in $NS: crm-sync, crm-sync-keda, gift-certificates, gift-certificates-keys"
