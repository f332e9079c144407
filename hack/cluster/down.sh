#!/usr/bin/env bash
# Stops everything up.sh started (by pid), the containers it ran, unmounts what they mounted,
# removes the network devices and firewall rules they made and the cluster's state. Safe to
# run when nothing, or only part of it, is running; keeps the build cache.
source "$(dirname "$0")/lib.sh"
quiet=${1:-}
say() { [[ $quiet == --quiet ]] || log "$@"; }

stop_pid() { # NAME: TERM, then KILL after a grace period
  local f="$RUN_DIR/pids/$1.pid" pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if [[ -d /proc/$pid ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$1"; then
    say "stopping $1 ($pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

# Control plane and node agents first, so nothing restarts the containers we stop next
# (and the bench's simulated nodes' kwok, if a round left it running).
for c in kwok kube-router kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver; do
  stop_pid "$c"
done

# Containers: every process in the kubelet's pod cgroups, then the shims that ran them.
for _ in 1 2 3; do
  pids=$(cat /sys/fs/cgroup/pids/kubepods/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/cgroup.procs \
    /sys/fs/cgroup/pids/kubepods/*/*/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/*/*/cgroup.procs 2>/dev/null || true)
  [[ -n $pids ]] || break
  kill -9 $pids 2>/dev/null || true
  sleep 0.3
done
for p in /proc/[0-9]*; do
  exe=$(readlink "$p/exe" 2>/dev/null || true)
  [[ $exe == "$CONTAINERD_BIN/containerd-shim-runc-v2" ]] && kill -9 "${p#/proc/}" 2>/dev/null || true
done
stop_pid containerd
stop_pid etcd

# Mounts left by containers, pod volumes and network namespaces, deepest first.
for prefix in "$RUN_DIR" /run/codeinterp; do
  { findmnt -rn -o TARGET | grep "^$prefix" | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done; } || true
done

# Network: the CNI bridge, the masquerade and port-map chains, kube-proxy's and kube-router's
# chains and ipsets. Rules of anything else on the host are left as they were.
ip link del cni0 2>/dev/null || true
for ipt in iptables ip6tables; do
  if $ipt-save 2>/dev/null | grep -qE 'KUBE-|CNI-|kube-router'; then
    $ipt-save | grep -vE 'KUBE-|CNI-|kube-router' | $ipt-restore || say "warning: $ipt rules left behind"
  fi
done
{ ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router|inet6:KUBE-)' | while read -r s; do ipset destroy "$s" 2>/dev/null || true; done; } || true

# Empty cgroups the kubelet made.
for ctl in /sys/fs/cgroup/*/; do
  [[ -d $ctl/kubepods ]] && find "$ctl/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  for extra in kubepods.slice system.slice/containerd.service; do [[ -d $ctl/$extra ]] && rmdir "$ctl/$extra" 2>/dev/null || true; done
done

rm -rf "$RUN_DIR" /run/codeinterp
say "cluster stopped and cleaned up"
