#!/usr/bin/env bash
# Installs the stack on the running local cluster through the Helm chart, exactly as users
# install it: CRD, sandbox namespace, seccomp profile DaemonSet, operator and REST API. The
# API then answers at http://localhost:8080 (token dev_123). Idempotent: when the chart,
# the values and the images are unchanged, nothing is touched.
source "$(dirname "$0")/../cluster/lib.sh"
RELEASE=codeinterp
RELEASE_NAMESPACE=codeinterp-system
STORAGE_DIR="$RUN_DIR/storage"
helm() { "$HELM_BIN/helm" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
# One install at a time on this host (two checkouts may run `make up` at once).
mkdir -p "$RUN_DIR"
exec {STACK_LOCK}>"$RUN_DIR/stack.lock"
flock "$STACK_LOCK"
kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# The pods run as UID 65532 and share this directory (single node). A default ACL keeps
# everything created in it writable for them, whoever creates it (tests and tools on the
# host run as root).
mkdir -p "$STORAGE_DIR"
chown 65532:65532 "$STORAGE_DIR"
setfacl -R -m u:65532:rwX -m d:u:65532:rwX "$STORAGE_DIR"

# The images' content keys: a rebuilt image rolls its pods even though its tag stays :dev.
image_key=$(ls "$CACHE_DIR"/images/operator-*.tar "$CACHE_DIR"/images/apiserver-*.tar 2>/dev/null | xargs -n1 basename | sort | sha256sum | cut -c1-16)
chart_key=$(cd "$REPO_ROOT" && { find charts/codeinterp -type f -print0 | sort -z | xargs -0 cat; cat hack/stack/values-local.yaml; echo "$image_key"; } | sha256sum | cut -c1-16)
if [[ "$(cat "$RUN_DIR/stack-key" 2>/dev/null)" == "$chart_key" ]] &&
   helm status "$RELEASE" -n "$RELEASE_NAMESPACE" >/dev/null 2>&1 &&
   curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1; then
  log "stack already installed and ready"
  exit 0
fi

log "installing the chart (release $RELEASE in $RELEASE_NAMESPACE)"
# Helm installs a CRD only on first install; keep it current on upgrades too.
kubectl_admin apply --server-side --force-conflicts -f "$REPO_ROOT/charts/codeinterp/crds/" >/dev/null
helm upgrade --install "$RELEASE" "$REPO_ROOT/charts/codeinterp" -n "$RELEASE_NAMESPACE" --create-namespace \
  -f "$REPO_ROOT/hack/stack/values-local.yaml" --set-string "restartKey=$image_key" --wait --timeout 5m 2>&1 |
  grep -v 'unrecognized format' || true
helm status "$RELEASE" -n "$RELEASE_NAMESPACE" >/dev/null || die "helm install failed"
kubectl_admin -n "$RELEASE_NAMESPACE" rollout status deploy/"$RELEASE"-operator --timeout=120s >/dev/null
kubectl_admin -n "$RELEASE_NAMESPACE" rollout status ds/"$RELEASE"-seccomp --timeout=120s >/dev/null
deadline=$((SECONDS + 120))
until curl -sf http://127.0.0.1:8080/readyz >/dev/null 2>&1; do
  ((SECONDS < deadline)) || die "the API did not become ready; kubectl -n $RELEASE_NAMESPACE logs deploy/$RELEASE-apiserver"
  sleep 0.5
done
echo "$chart_key" >"$RUN_DIR/stack-key"
log "API ready at http://localhost:8080 (token dev_123); admin page at http://localhost:8080/admin"
