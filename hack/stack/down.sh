#!/usr/bin/env bash
# Stops operator/REST API host processes that an earlier layout of `make up` started (before
# the stack moved into the Helm chart). The chart's pods stop with the cluster
# (hack/cluster/down.sh, which calls this first).
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
