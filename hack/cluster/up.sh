#!/usr/bin/env bash
# Brings up a single-node Kubernetes cluster from the cached binaries. Idempotent: when every
# component is alive and the node is Ready it changes nothing; when any died (or the machine
# was reset under it) it clears the leftovers and starts afresh.
source "$(dirname "$0")/lib.sh"
COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router)

"$CLUSTER_DIR/install-deps.sh"
"$CLUSTER_DIR/build.sh"

NODE_IP=$(ip -4 -o addr show dev "$(ip -4 route show default | awk '{print $5; exit}')" | awk '{split($4,a,"/"); print a[1]; exit}')
[[ -n $NODE_IP ]] || die "cannot find this host's address (no default route?)"

pid_alive() { # NAME: its pid file names a live process running our binary
  local f="$RUN_DIR/pids/$1.pid" pid
  [[ -f $f ]] || return 1
  pid=$(cat "$f"); [[ -d /proc/$pid ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$1"
}

kubectl_admin() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# The configuration the cluster runs with, rendered: config files with this host's values
# filled in, and every component's command line. A change to any of it (or to a pinned
# version) restarts the cluster; a change to a comment in this script does not.
RENDERED=$(mktemp -d)
trap 'rm -rf "$RENDERED"' EXIT
envsubst_file() { sed -e "s#@RUN_DIR@#$RUN_DIR#g" -e "s#@RUNC@#$RUNC_BIN/runc#g" \
  -e "s#@SOCK@#$CONTAINERD_SOCK#g" -e "s#@POD_CIDR@#$POD_CIDR#g" -e "s#@NODE_IP@#$NODE_IP#g" \
  -e "s#@PKI@#$PKI_DIR#g" -e "s#@DNS_IP@#$DNS_SVC_IP#g" "$1" | grep -v '^\s*#' >"$2"; }
for f in containerd.toml 10-bridge.conflist kubelet.yaml kube-proxy.yaml; do
  envsubst_file "$CLUSTER_DIR/config/$f" "$RENDERED/$f"
done

ETCD_ARGS=(--name codeinterp --data-dir "$RUN_DIR/etcd"
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380
  --initial-cluster codeinterp=http://127.0.0.1:2380 --quota-backend-bytes 4294967296
  --unsafe-no-fsync)
APISERVER_ARGS=(--advertise-address "$NODE_IP" --bind-address 0.0.0.0 --secure-port "$API_PORT"
  --etcd-servers http://127.0.0.1:2379
  --service-cluster-ip-range "$SERVICE_CIDR"
  --client-ca-file "$PKI_DIR/ca.crt"
  --tls-cert-file "$PKI_DIR/apiserver.crt" --tls-private-key-file "$PKI_DIR/apiserver.key"
  --kubelet-client-certificate "$PKI_DIR/apiserver-kubelet-client.crt"
  --kubelet-client-key "$PKI_DIR/apiserver-kubelet-client.key"
  --kubelet-certificate-authority "$PKI_DIR/ca.crt"
  --kubelet-preferred-address-types InternalIP,Hostname
  --service-account-issuer https://kubernetes.default.svc.cluster.local
  --service-account-key-file "$PKI_DIR/sa.pub"
  --service-account-signing-key-file "$PKI_DIR/sa.key"
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction
  --allow-privileged=true --profiling=false --v=1)
CONTROLLER_MANAGER_ARGS=(--kubeconfig "$PKI_DIR/controller-manager.kubeconfig"
  --authentication-kubeconfig "$PKI_DIR/controller-manager.kubeconfig"
  --authorization-kubeconfig "$PKI_DIR/controller-manager.kubeconfig"
  --bind-address 127.0.0.1 --leader-elect=false
  --service-account-private-key-file "$PKI_DIR/sa.key" --root-ca-file "$PKI_DIR/ca.crt"
  --cluster-signing-cert-file "$PKI_DIR/ca.crt" --cluster-signing-key-file "$PKI_DIR/ca.key"
  --use-service-account-credentials --allocate-node-cidrs --cluster-cidr 10.244.0.0/16
  --node-cidr-mask-size 24 --service-cluster-ip-range "$SERVICE_CIDR" --v=1)
SCHEDULER_ARGS=(--kubeconfig "$PKI_DIR/scheduler.kubeconfig"
  --authentication-kubeconfig "$PKI_DIR/scheduler.kubeconfig"
  --authorization-kubeconfig "$PKI_DIR/scheduler.kubeconfig"
  --bind-address 127.0.0.1 --leader-elect=false --v=1)
KUBELET_ARGS=(--config "$RUN_DIR/config/kubelet.yaml"
  --kubeconfig "$PKI_DIR/kubelet-client.kubeconfig" --hostname-override "$NODE_NAME"
  --node-ip "$NODE_IP" --root-dir "$RUN_DIR/kubelet" --v=1)
KUBE_PROXY_ARGS=(--config "$RUN_DIR/config/kube-proxy.yaml" --hostname-override "$NODE_NAME")
# NetworkPolicy enforcement: kube-router's firewall only (pod routing is the bridge CNI's,
# services are kube-proxy's).
KUBE_ROUTER_ARGS=(--kubeconfig "$PKI_DIR/kube-router.kubeconfig"
  --hostname-override "$NODE_NAME" --run-firewall=true --run-router=false
  --run-service-proxy=false --metrics-port 0 --health-port 20245 --v=1)

config_key() {
  {
    cat "$CLUSTER_DIR/versions.env" "$RENDERED"/*
    declare -p ETCD_ARGS APISERVER_ARGS CONTROLLER_MANAGER_ARGS SCHEDULER_ARGS KUBELET_ARGS \
      KUBE_PROXY_ARGS KUBE_ROUTER_ARGS
  } | sha256sum | cut -c1-16
}

healthy() {
  local c
  [[ "$(cat "$RUN_DIR/config-key" 2>/dev/null)" == "$(config_key)" ]] || return 1
  for c in "${COMPONENTS[@]}"; do pid_alive "$c" || return 1; done
  [[ "$(cat "$PKI_DIR/.node-ip" 2>/dev/null)" == "$NODE_IP" ]] || return 1
  kubectl_admin get --raw /readyz >/dev/null 2>&1 || return 1
  kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True
}

start() { # NAME CMD...: run in its own session, log to $LOG_DIR/NAME.log, pid to pids/NAME.pid
  local name=$1; shift
  log "starting $name"
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/pids/$name.pid"
}

wait_for() { # WHAT SECONDS CMD...
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what not ready after ${secs}s; logs in $LOG_DIR"
    sleep 0.5
  done
}

if healthy; then
  log "cluster already running"
else
  log "cluster not running (or partly dead): clearing leftovers and starting it"
  "$CLUSTER_DIR/down.sh" --quiet
  mkdir -p "$RUN_DIR"/{pids,logs,etcd,kubelet/seccomp,cni/net.d,cni/ipam,config} /run/codeinterp
  config_key >"$RUN_DIR/config-key"
  "$CLUSTER_DIR/pki.sh" "$NODE_IP"

  # Kernel settings pods and NetworkPolicy enforcement need: bridged traffic goes through
  # iptables (so policy applies between pods on the same bridge), routing on.
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
    net.bridge.bridge-nf-call-ip6tables=1 fs.inotify.max_user_instances=1024 >/dev/null

  cp "$RENDERED/containerd.toml" "$RENDERED/kubelet.yaml" "$RENDERED/kube-proxy.yaml" "$RUN_DIR/config/"
  cp "$RENDERED/10-bridge.conflist" "$RUN_DIR/cni/net.d/"

  PATH="$CONTAINERD_BIN:$RUNC_BIN:$PATH" start containerd "$CONTAINERD_BIN/containerd" \
    --config "$RUN_DIR/config/containerd.toml"
  start etcd "$ETCD_BIN/etcd" "${ETCD_ARGS[@]}"
  wait_for etcd 60 "$ETCD_BIN/etcdctl" --endpoints http://127.0.0.1:2379 endpoint health
  wait_for containerd 60 test -S "$CONTAINERD_SOCK"
  "$REPO_ROOT/hack/images/pause.sh"

  start kube-apiserver "$K8S_BIN/kube-apiserver" "${APISERVER_ARGS[@]}"
  wait_for kube-apiserver 120 kubectl_admin get --raw /readyz

  start kube-controller-manager "$K8S_BIN/kube-controller-manager" "${CONTROLLER_MANAGER_ARGS[@]}"
  start kube-scheduler "$K8S_BIN/kube-scheduler" "${SCHEDULER_ARGS[@]}"
  start kubelet "$K8S_BIN/kubelet" "${KUBELET_ARGS[@]}"
  start kube-proxy "$K8S_BIN/kube-proxy" "${KUBE_PROXY_ARGS[@]}"
  wait_for "node $NODE_NAME Ready" 180 bash -c \
    "'$K8S_BIN/kubectl' --kubeconfig '$KUBECONFIG_ADMIN' get node '$NODE_NAME' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -q True"
  # kube-router needs the Node object, so it starts after registration.
  start kube-router "$KUBE_ROUTER_BIN/kube-router" "${KUBE_ROUTER_ARGS[@]}"
  wait_for kube-router 60 curl -sf http://127.0.0.1:20245/healthz
  wait_for "default service account" 60 kubectl_admin get serviceaccount default -n default
fi

for c in "${COMPONENTS[@]}"; do pid_alive "$c" || die "$c died during start-up; see $LOG_DIR/$c.log"; done

# Where kubectl looks by default; an unrelated kubeconfig already there is kept aside once.
mkdir -p "$HOME/.kube"
if [[ -f $HOME/.kube/config ]] && ! grep -q "name: codeinterp" "$HOME/.kube/config" && [[ ! -f $HOME/.kube/config.before-codeinterp ]]; then
  cp "$HOME/.kube/config" "$HOME/.kube/config.before-codeinterp"
fi
cp "$KUBECONFIG_ADMIN" "$HOME/.kube/config"
command -v kubectl >/dev/null 2>&1 || ln -sf "$K8S_BIN/kubectl" /usr/local/bin/kubectl
log "node $NODE_NAME Ready at https://$NODE_IP:$API_PORT; logs in $LOG_DIR"
