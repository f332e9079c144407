#!/usr/bin/env bash
# Builds every cluster binary from the Go module proxy into the cache, keyed by version.
# A component whose cache directory is complete is not built again.
source "$(dirname "$0")/lib.sh"
export GOFLAGS="-mod=mod" GOWORK=off GOTOOLCHAIN=auto
WORK="$CACHE_DIR/src"
mkdir -p "$WORK" "$CACHE_DIR/bin"

# Runs "$2 DIR" to build into a scratch DIR, then moves it to $1 and marks it complete: a
# build cut short never leaves a directory that looks finished, and a finished one is kept.
cached() {
  local out=$1 build=$2
  [[ -f "$out/.complete" ]] && return 0
  rm -rf "$out.tmp"; mkdir -p "$out.tmp"
  "$build" "$out.tmp"
  rm -rf "$out"; mv "$out.tmp" "$out"; touch "$out/.complete"
}

# A throwaway module that depends on $1@$2, so the proxy's go.sum checks apply and the
# dependency's own replace directives (pointing at sibling folders) do not get in the way.
wrapper_module() {
  local dir="$WORK/$3"
  rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
  go mod init "codeinterp.local/build/$3" >/dev/null 2>&1
  go get "$1@$2" >/dev/null
}

# Static, reproducible, stripped; extra ldflags in $LDFLAGS, cgo only when $CGO is 1.
gobuild() { CGO_ENABLED="${CGO:-0}" go build -trimpath -ldflags "-s -w ${LDFLAGS:-}" "$@"; }

# The module zip of k8s.io/kubernetes leaves out the staging modules (each has its own
# go.mod): put the published copy of each where the replace directives expect it.
stage_kubernetes() {
  local src=$1 staging_version="v0.${KUBERNETES_VERSION#v1.}"
  [[ -f "$src/.staged" ]] && return 0
  rm -rf "$src"
  local mod; mod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | jq -r .Dir)
  cp -r "$mod" "$src"; chmod -R u+w "$src"
  local name dir
  for name in $(sed -n 's#^\s*k8s.io/\([a-z0-9-]*\) => ./staging/src/k8s.io/.*#\1#p' "$src/go.mod"); do
    dir=$(go mod download -json "k8s.io/$name@$staging_version" | jq -r '.Dir // empty' || true)
    if [[ -z $dir ]]; then
      # Some example modules (sample-*) are not served by the proxy; no component needs them.
      log "  k8s.io/$name@$staging_version not available; dropping it from the build"
      (cd "$src" && go mod edit -dropreplace "k8s.io/$name" -droprequire "k8s.io/$name")
      continue
    fi
    rm -rf "$src/staging/src/k8s.io/$name"; mkdir -p "$src/staging/src/k8s.io"; cp -r "$dir" "$src/staging/src/k8s.io/$name"
    chmod -R u+w "$src/staging/src/k8s.io/$name"
  done
  touch "$src/.staged"
}

compile_kubernetes() {
  log "building Kubernetes $KUBERNETES_VERSION (several minutes on two cores)"
  local src="$WORK/kubernetes-$KUBERNETES_VERSION"
  stage_kubernetes "$src"
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local LDFLAGS="" pkg c
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    log "  $c"
    (cd "$src" && LDFLAGS=$LDFLAGS gobuild -o "$1/$c" "./cmd/$c")
  done
}

compile_etcd() {
  log "building etcd $ETCD_VERSION"
  wrapper_module go.etcd.io/etcd/server/v3 "$ETCD_VERSION" etcd
  go get "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" >/dev/null
  gobuild -o "$1/etcd" go.etcd.io/etcd/server/v3
  gobuild -o "$1/etcdctl" go.etcd.io/etcd/etcdctl/v3
}

compile_containerd() {
  log "building containerd $CONTAINERD_VERSION"
  local base=github.com/containerd/containerd/v2 c
  wrapper_module "$base" "$CONTAINERD_VERSION" containerd
  for c in containerd containerd-shim-runc-v2 ctr; do
    LDFLAGS="-X $base/version.Version=$CONTAINERD_VERSION -X $base/version.Package=$base" \
      gobuild -tags "no_btrfs no_devmapper no_zfs" -o "$1/$c" "$base/cmd/$c"
  done
}

compile_runc() {
  log "building runc $RUNC_VERSION"
  wrapper_module github.com/opencontainers/runc "$RUNC_VERSION" runc
  CGO=1 LDFLAGS="-X main.version=${RUNC_VERSION#v}" \
    gobuild -tags "seccomp urfave_cli_no_docs" -o "$1/runc" github.com/opencontainers/runc
}

# NetworkPolicy enforcement. kube-network-policies would be the first choice, but it needs
# nftables' queue expression (CONFIG_NFT_QUEUE), which this kernel lacks; kube-router's
# firewall uses iptables and ipset, which it has.
compile_kube_router() {
  log "building kube-router $KUBE_ROUTER_VERSION"
  wrapper_module github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION" kube-router
  gobuild -o "$1/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
}

compile_helm() {
  log "building helm $HELM_VERSION"
  wrapper_module helm.sh/helm/v3 "$HELM_VERSION" helm
  LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    gobuild -o "$1/helm" helm.sh/helm/v3/cmd/helm
}

# kwok and the stages it plays (a node made Ready and kept alive through its Lease, a pod
# bound to it marked Running, a pod being deleted removed), from the same module version.
compile_kwok() {
  log "building kwok $KWOK_VERSION"
  wrapper_module sigs.k8s.io/kwok "$KWOK_VERSION" kwok
  gobuild -o "$1/kwok" sigs.k8s.io/kwok/cmd/kwok
  local src; src=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  mkdir -p "$1/stages"
  cp "$src/kustomize/stage/node/fast/node-initialize.yaml" \
    "$src/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    "$src/kustomize/stage/pod/fast/pod-ready.yaml" "$src/kustomize/stage/pod/fast/pod-delete.yaml" \
    "$1/stages/"
}

declare -A OUT=([kubernetes]="$K8S_BIN" [etcd]="$ETCD_BIN" [containerd]="$CONTAINERD_BIN"
  [runc]="$RUNC_BIN" [kube_router]="$KUBE_ROUTER_BIN" [helm]="$HELM_BIN" [kwok]="$KWOK_BIN")

targets=("$@")
# What the cluster needs (kwok is built only when asked for, by hack/kwok/kwok.sh).
((${#targets[@]})) || targets=(containerd runc etcd kubernetes kube_router helm)
for t in "${targets[@]}"; do
  [[ -n ${OUT[$t]:-} ]] || die "unknown component: $t (one of: ${!OUT[*]})"
  cached "${OUT[$t]}" "compile_$t"
done
log "binaries ready in $CACHE_DIR/bin"
