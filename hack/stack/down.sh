#!/usr/bin/env bash
# Uninstalls the chart from the local cluster (the cluster itself stops with
# hack/cluster/down.sh). With --processes-only, only stops operator/API host processes that
# an older layout of `make up` started.
source "$(dirname "$0")/../cluster/lib.sh"
for name in apiserver operator; do
  pidf="$RUN_DIR/pids/$name.pid"
  [[ -f $pidf ]] || continue
  pid=$(cat "$pidf")
  if [[ -d /proc/$pid ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$name"; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidf" "$pidf.sum"
done
[[ ${1:-} == --processes-only ]] && exit 0
if [[ -S $CONTAINERD_SOCK ]] && "$HELM_BIN/helm" --kubeconfig "$KUBECONFIG_ADMIN" status codeinterp -n codeinterp-system >/dev/null 2>&1; then
  "$HELM_BIN/helm" --kubeconfig "$KUBECONFIG_ADMIN" uninstall codeinterp -n codeinterp-system --wait --timeout 60s >/dev/null || true
fi
rm -f "$RUN_DIR/stack-key"
