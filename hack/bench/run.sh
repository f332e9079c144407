#!/usr/bin/env bash
# The benchmarks (`make bench` calls this after `make up`; it also works on its own against a
# stack that is up). Builds the bench binary, installs wrk when missing, and runs every
# benchmark; extra arguments go to the binary, e.g. `hack/bench/run.sh --only latency,pool
# --latency-runs 10` (see `--help`; each flag also has a BENCH_* variable). It prints one table
# and writes the same figures to $RUN_DIR/bench/results.json plus a dated copy.
#
# The API load benchmark starts its own apiserver from the binary the stack runs (built by
# `make up`; built here only when missing), so it measures the same code as the rest.
source "$(dirname "$0")/../cluster/lib.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/cargo-target}"
export KUBECONFIG="${KUBECONFIG:-$HOME/.kube/config}"
export CODEINTERP_RUN="$RUN_DIR"
export BENCH_OUT_DIR="${BENCH_OUT_DIR:-$RUN_DIR/bench}"
export BENCH_APISERVER_BIN="${BENCH_APISERVER_BIN:-$CARGO_TARGET_DIR/release/apiserver}"
# The warm pool benchmark resizes the pool through Helm and rolls the release back after.
export BENCH_HELM="$HELM_BIN/helm" KUBECONFIG_ADMIN BENCH_CHART="$REPO_ROOT/charts/codeinterp"

bench_log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if ! command -v wrk >/dev/null; then
  bench_log "installing wrk (the HTTP load generator)"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

cd "$REPO_ROOT"
if [[ ! -x $BENCH_APISERVER_BIN ]]; then
  bench_log "building the apiserver"
  cargo build --quiet --release --workspace --bins
fi
bench_log "building the benchmarks"
cargo build --quiet --release --workspace --bins
exec "$CARGO_TARGET_DIR/release/bench" "$@"
