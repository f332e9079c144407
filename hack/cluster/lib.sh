# Shared settings for the local-cluster scripts. Sourced, not run.
set -euo pipefail
CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_DIR/../.." && pwd)"
# shellcheck source=versions.env
source "$CLUSTER_DIR/versions.env"
# Built binaries and images survive across clones of the repository (CI reuses them).
CACHE_DIR="${CODEINTERP_CACHE:-/var/cache/codeinterp}"
# Everything the running cluster owns: pids, logs, certificates, state. Wiped by `make down`.
RUN_DIR="${CODEINTERP_RUN:-/var/lib/codeinterp}"
LOG_DIR="$RUN_DIR/logs"
PKI_DIR="$RUN_DIR/pki"
K8S_BIN="$CACHE_DIR/bin/kubernetes-$KUBERNETES_VERSION"
ETCD_BIN="$CACHE_DIR/bin/etcd-$ETCD_VERSION"
CONTAINERD_BIN="$CACHE_DIR/bin/containerd-$CONTAINERD_VERSION"
RUNC_BIN="$CACHE_DIR/bin/runc-$RUNC_VERSION"
KUBE_ROUTER_BIN="$CACHE_DIR/bin/kube-router-$KUBE_ROUTER_VERSION"
HELM_BIN="$CACHE_DIR/bin/helm-$HELM_VERSION"
# Simulated nodes for the bench's scale round only (hack/kwok/kwok.sh; `make up` neither
# builds nor starts it). Pinned here rather than in versions.env, whose change restarts the
# cluster.
KWOK_VERSION=v0.8.0
KWOK_BIN="$CACHE_DIR/bin/kwok-$KWOK_VERSION"
NODE_NAME="${NODE_NAME:-codeinterp-node}"
POD_CIDR="10.244.0.0/24"
SERVICE_CIDR="10.96.0.0/16"
KUBERNETES_SVC_IP="10.96.0.1"
DNS_SVC_IP="10.96.0.10"
API_PORT=6443
CONTAINERD_SOCK="/run/codeinterp/containerd/containerd.sock"
KUBECONFIG_ADMIN="$PKI_DIR/admin.kubeconfig"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
