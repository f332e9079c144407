#!/usr/bin/env bash
# Installs the CRD, the sandbox namespace and the seccomp profile on the running cluster, and
# starts the operator and the REST API (as host processes, with their logs beside the
# cluster's). Idempotent: a running component whose binary has not changed is left alone.
source "$(dirname "$0")/../cluster/lib.sh"
BIN_DIR="${CARGO_TARGET_DIR:-/var/cache/codeinterp/cargo-target}/release"
SANDBOX_NAMESPACE="${SANDBOX_NAMESPACE:-codeinterp}"
STORAGE_DIR="$RUN_DIR/storage"
kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

kubectl_admin apply --server-side --force-conflicts -f "$REPO_ROOT/crds/coderun.yaml" >/dev/null
kubectl_admin wait --for=condition=Established crd/coderuns.codeinterp.dev --timeout=60s >/dev/null
kubectl_admin apply --server-side -f - >/dev/null <<NS
apiVersion: v1
kind: Namespace
metadata:
  name: $SANDBOX_NAMESPACE
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
NS

# The kubelet resolves Localhost seccomp profiles under <root-dir>/seccomp.
install -D -m 0644 "$REPO_ROOT/policies/seccomp/runner.json" "$RUN_DIR/kubelet/seccomp/codeinterp/runner.json"

mkdir -p "$STORAGE_DIR" "$RUN_DIR/pids" "$LOG_DIR"
[[ -s $RUN_DIR/signing-key ]] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$RUN_DIR/signing-key"

# start_service NAME ENV...: (re)start BIN_DIR/NAME unless the same binary already runs.
start_service() {
  local name=$1; shift
  local pidf="$RUN_DIR/pids/$name.pid" sum
  sum=$(sha256sum "$BIN_DIR/$name" | cut -c1-16)
  if [[ -f $pidf ]] && [[ -d /proc/$(cat "$pidf") ]] && [[ "$(cat "$pidf.sum" 2>/dev/null)" == "$sum" ]]; then
    return 0
  fi
  if [[ -f $pidf ]] && [[ -d /proc/$(cat "$pidf") ]]; then
    log "restarting $name (new binary)"
    kill "$(cat "$pidf")" 2>/dev/null || true
    for _ in $(seq 50); do [[ -d /proc/$(cat "$pidf") ]] || break; sleep 0.1; done
  else
    log "starting $name"
  fi
  env -i PATH=/usr/bin:/bin HOME="$HOME" KUBECONFIG="$KUBECONFIG_ADMIN" RUST_LOG=info "$@" \
    setsid "$BIN_DIR/$name" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$pidf"
  echo "$sum" >"$pidf.sum"
}

start_service operator STORAGE_URL="$STORAGE_DIR" METRICS_ADDR=127.0.0.1:9090 \
  SECCOMP_PROFILE=codeinterp/runner.json
start_service apiserver PORT=8080 STORAGE_URL="$STORAGE_DIR" SANDBOX_NAMESPACE="$SANDBOX_NAMESPACE" \
  API_KEYS="${API_KEYS:-dev_123:dev:100:200}" SIGNING_KEY="$(cat "$RUN_DIR/signing-key")" \
  PUBLIC_BASE_URL=http://localhost:8080

deadline=$((SECONDS + 60))
until curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1; do
  ((SECONDS < deadline)) || die "the API did not become ready; see $LOG_DIR/apiserver.log"
  sleep 0.3
done
log "API ready at http://localhost:8080 (token dev_123); operator metrics at http://127.0.0.1:9090/metrics"
