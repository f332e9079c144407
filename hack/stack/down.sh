#!/usr/bin/env bash
# Stops the operator and the REST API that hack/stack/up.sh started.
source "$(dirname "$0")/../cluster/lib.sh"
for name in apiserver operator; do
  pidf="$RUN_DIR/pids/$name.pid"
  [[ -f $pidf ]] || continue
  pid=$(cat "$pidf")
  if [[ -d /proc/$pid ]]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidf" "$pidf.sum"
done
