#!/usr/bin/env bash
# Simulated nodes beside the real one, for the bench's scale round (`make bench`; `make up`
# neither builds nor starts them): kwok, built from the Go module proxy into the cache
# (version pinned in hack/cluster/lib.sh), run against the local cluster's kube-apiserver with
# the real kube-scheduler placing pods. kwok keeps the nodes it manages Ready (a Lease each)
# and marks the pods bound to them Running. Nothing runs there: no kubelet, no container, and
# an attach to such a pod is refused at once (the nodes' kubelet address is 127.0.0.1:1).
#
#   kwok.sh start [NODES [LARGE]]  build if missing, register NODES nodes, LARGE of them
#                                  large (default 100 and 10), start kwok, wait until Ready
#   kwok.sh stop                   delete the nodes and the pods bound to them, stop kwok
#   kwok.sh status                 the simulated nodes, and whether kwok runs
#
# Every simulated node has the taint kwok.x-k8s.io/node=fake:NoSchedule (no pod of the normal
# stack tolerates it) and the label type=kwok. A standard node has 4 CPU, 8 GiB, room for
# 110 pods and 100 GiB of ephemeral storage; a large one 16 CPU, 64 GiB, 110 pods and
# 400 GiB: the largest run a pod can ask for (8 GiB of memory and twice 1 GiB of disk) fits
# only the large ones. Shapes are "cpu memory pods storage" in KWOK_NODE_SHAPE and
# KWOK_LARGE_SHAPE.
#
# KWOK_POD_START_SECONDS (default 0) holds a pod bound to a simulated node that long before
# it is marked Running: the room it takes stays taken, as a run's would while it runs (a
# start with another value restarts kwok).
source "$(dirname "$0")/../cluster/lib.sh"
NODE_SHAPE=(${KWOK_NODE_SHAPE:-4 8Gi 110 100Gi})
LARGE_SHAPE=(${KWOK_LARGE_SHAPE:-16 64Gi 110 400Gi})
LABEL=type=kwok
PID_FILE="$RUN_DIR/pids/kwok.pid"
STAGES="$RUN_DIR/kwok"
START_MS=$(( ${KWOK_POD_START_SECONDS:-0} * 1000 ))
kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

running() {
  [[ -f $PID_FILE ]] && [[ -d /proc/$(cat "$PID_FILE") ]] &&
    tr '\0' ' ' <"/proc/$(cat "$PID_FILE")/cmdline" | grep -q -- "$KWOK_BIN/kwok"
}

node_yaml() { # NAME CPU MEMORY PODS STORAGE
  cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: $1
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {type: kwok, kubernetes.io/hostname: $1, kubernetes.io/os: linux, kubernetes.io/arch: amd64}
spec:
  taints: [{key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}]
status:
  allocatable: {cpu: "$2", memory: $3, pods: "$4", ephemeral-storage: $5}
  capacity: {cpu: "$2", memory: $3, pods: "$4", ephemeral-storage: $5}
  phase: Running
YAML
}

start() {
  local nodes=${1:-100} large=${2:-10} i
  ((large <= nodes)) || die "LARGE ($large) is more than NODES ($nodes)"
  kubectl_admin get --raw /readyz >/dev/null 2>&1 || die "the cluster is not up (make up)"
  "$CLUSTER_DIR/build.sh" kwok
  mkdir -p "$RUN_DIR/pids" "$LOG_DIR"
  log "registering $nodes simulated nodes ($large large)"
  {
    for ((i = 0; i < nodes - large; i++)); do node_yaml "$(printf 'kwok-node-%03d' "$i")" "${NODE_SHAPE[@]}"; done
    for ((i = 0; i < large; i++)); do node_yaml "$(printf 'kwok-large-%03d' "$i")" "${LARGE_SHAPE[@]}"; done
  } | kubectl_admin apply -f - >/dev/null
  if running && [[ "$(cat "$STAGES/start-ms" 2>/dev/null)" != "$START_MS" ]]; then
    stop_kwok
  fi
  if running; then
    log "kwok already running ($(cat "$PID_FILE"))"
  else
    log "starting kwok (pods marked Running ${START_MS} ms after they are bound)"
    mkdir -p "$STAGES"
    # The pod-ready stage, held back by the start delay.
    sed "s/^spec:\$/spec:\n  delay: {durationMilliseconds: $START_MS}/" \
      "$KWOK_BIN/stages/pod-ready.yaml" >"$STAGES/pod-ready.yaml"
    echo "$START_MS" >"$STAGES/start-ms"
    setsid "$KWOK_BIN/kwok" --kubeconfig "$KUBECONFIG_ADMIN" \
      --config "$KWOK_BIN/stages/node-initialize.yaml" \
      --config "$KWOK_BIN/stages/node-heartbeat-with-lease.yaml" \
      --config "$STAGES/pod-ready.yaml" --config "$KWOK_BIN/stages/pod-delete.yaml" \
      --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --node-ip 127.0.0.1 --node-port 1 --cidr 10.250.0.0/16 \
      --node-lease-duration-seconds 40 >>"$LOG_DIR/kwok.log" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
  fi
  kubectl_admin wait --for=condition=Ready node -l "$LABEL" --timeout=180s >/dev/null ||
    die "the simulated nodes are not Ready; see $LOG_DIR/kwok.log"
  running || die "kwok exited; see $LOG_DIR/kwok.log"
  log "$(kubectl_admin get nodes -l "$LABEL" --no-headers | wc -l) simulated nodes Ready"
}

# Pods bound to simulated nodes, as "namespace name" lines.
pods_on_nodes() {
  kubectl_admin get pods -A -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.name} {.spec.nodeName}{"\n"}{end}' |
    awk '$3 ~ /^kwok-(node|large)-/ {print $1, $2}'
}

stop() {
  local ns names
  if kubectl_admin get --raw /readyz >/dev/null 2>&1; then
    # The nodes first, so that no controller (a DaemonSet's) puts pods back on them; then
    # their pods, removed at once (no kubelet is there to confirm anything).
    log "deleting the simulated nodes and the pods bound to them"
    kubectl_admin delete nodes -l "$LABEL" --ignore-not-found >/dev/null
    while read -r ns names; do
      [[ -n $ns ]] || continue
      xargs -n 500 "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" delete pod -n "$ns" \
        --grace-period=0 --force --ignore-not-found <<<"$names" >/dev/null 2>&1 || true
    done < <(pods_on_nodes | awk '{a[$1] = a[$1] " " $2} END {for (n in a) print n, a[n]}')
  fi
  stop_kwok
}

stop_kwok() {
  if running; then
    local pid; pid=$(cat "$PID_FILE")
    log "stopping kwok ($pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  status)
    if running; then echo "kwok running ($(cat "$PID_FILE"))"; else echo "kwok not running"; fi
    kubectl_admin get nodes -l "$LABEL" --no-headers 2>/dev/null | awk '{print $2}' | sort | uniq -c
    ;;
  *) die "usage: $0 start [NODES [LARGE]] | stop | status" ;;
esac
