#!/usr/bin/env bash
# Builds every cluster binary from the Go module proxy into the cache, keyed by version.
# A component whose cache directory is complete is not built again.
source "$(dirname "$0")/lib.sh"
export GOFLAGS="-mod=mod" GOWORK=off GOTOOLCHAIN=auto
WORK="$CACHE_DIR/src"
mkdir -p "$WORK" "$CACHE_DIR/bin"

done_marker() { [[ -f "$1/.complete" ]]; }

# A throwaway module that depends on $1@$2, so the proxy's go.sum checks apply and the
# dependency's own replace directives (pointing at sibling folders) do not get in the way.
wrapper_module() {
  local dir="$WORK/$3"
  rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
  go mod init "codeinterp.local/build/$3" >/dev/null 2>&1
  go get "$1@$2" >/dev/null
}

build_kubernetes() {
  local out="$K8S_BIN"
  done_marker "$out" && return 0
  log "building Kubernetes $KUBERNETES_VERSION (several minutes on two cores)"
  local src="$WORK/kubernetes-$KUBERNETES_VERSION"
  local staging_version="v0.${KUBERNETES_VERSION#v1.}"
  if [[ ! -f "$src/.staged" ]]; then
    rm -rf "$src"
    local mod; mod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | jq -r .Dir)
    cp -r "$mod" "$src"; chmod -R u+w "$src"
    # The module zip leaves out the staging modules (each has its own go.mod): put the
    # published copy of each where the replace directives expect it.
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
  fi
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local ldflags="-s -w" pkg
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$out.tmp"
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    log "  $c"
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp/$c" "./cmd/$c")
  done
  rm -rf "$out"; mv "$out.tmp" "$out"; touch "$out/.complete"
}

build_etcd() {
  done_marker "$ETCD_BIN" && return 0
  log "building etcd $ETCD_VERSION"
  wrapper_module go.etcd.io/etcd/server/v3 "$ETCD_VERSION" etcd
  go get "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" >/dev/null
  mkdir -p "$ETCD_BIN.tmp"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN.tmp/etcd" go.etcd.io/etcd/server/v3
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN.tmp/etcdctl" go.etcd.io/etcd/etcdctl/v3
  rm -rf "$ETCD_BIN"; mv "$ETCD_BIN.tmp" "$ETCD_BIN"; touch "$ETCD_BIN/.complete"
}

build_containerd() {
  done_marker "$CONTAINERD_BIN" && return 0
  log "building containerd $CONTAINERD_VERSION"
  wrapper_module github.com/containerd/containerd/v2 "$CONTAINERD_VERSION" containerd
  local base=github.com/containerd/containerd/v2
  local ldflags="-s -w -X $base/version.Version=$CONTAINERD_VERSION -X $base/version.Package=github.com/containerd/containerd/v2"
  mkdir -p "$CONTAINERD_BIN.tmp"
  local c
  for c in containerd containerd-shim-runc-v2 ctr; do
    CGO_ENABLED=0 go build -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags "$ldflags" \
      -o "$CONTAINERD_BIN.tmp/$c" "$base/cmd/$c"
  done
  rm -rf "$CONTAINERD_BIN"; mv "$CONTAINERD_BIN.tmp" "$CONTAINERD_BIN"; touch "$CONTAINERD_BIN/.complete"
}

build_runc() {
  done_marker "$RUNC_BIN" && return 0
  log "building runc $RUNC_VERSION"
  wrapper_module github.com/opencontainers/runc "$RUNC_VERSION" runc
  mkdir -p "$RUNC_BIN.tmp"
  CGO_ENABLED=1 go build -trimpath -tags "seccomp urfave_cli_no_docs" \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" -o "$RUNC_BIN.tmp/runc" github.com/opencontainers/runc
  rm -rf "$RUNC_BIN"; mv "$RUNC_BIN.tmp" "$RUNC_BIN"; touch "$RUNC_BIN/.complete"
}

build_kube_router() {
  done_marker "$KUBE_ROUTER_BIN" && return 0
  # NetworkPolicy enforcement. kube-network-policies would be the first choice, but it needs
  # nftables' queue expression (CONFIG_NFT_QUEUE), which this kernel lacks; kube-router's
  # firewall uses iptables and ipset, which it has.
  log "building kube-router $KUBE_ROUTER_VERSION"
  wrapper_module github.com/cloudnativelabs/kube-router/v2 "$KUBE_ROUTER_VERSION" kube-router
  mkdir -p "$KUBE_ROUTER_BIN.tmp"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$KUBE_ROUTER_BIN.tmp/kube-router" \
    github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
  rm -rf "$KUBE_ROUTER_BIN"; mv "$KUBE_ROUTER_BIN.tmp" "$KUBE_ROUTER_BIN"; touch "$KUBE_ROUTER_BIN/.complete"
}

build_helm() {
  done_marker "$HELM_BIN" && return 0
  log "building helm $HELM_VERSION"
  wrapper_module helm.sh/helm/v3 "$HELM_VERSION" helm
  mkdir -p "$HELM_BIN.tmp"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    -o "$HELM_BIN.tmp/helm" helm.sh/helm/v3/cmd/helm
  rm -rf "$HELM_BIN"; mv "$HELM_BIN.tmp" "$HELM_BIN"; touch "$HELM_BIN/.complete"
}

targets=("$@")
((${#targets[@]})) || targets=(containerd runc etcd kubernetes kube_router helm)
for t in "${targets[@]}"; do "build_$t"; done
log "binaries ready in $CACHE_DIR/bin"
