#!/usr/bin/env bash
# Host packages the cluster and the image pipeline need, from Debian's archive.
source "$(dirname "$0")/lib.sh"
pkgs=(containernetworking-plugins buildah mmdebstrap libseccomp-dev pkg-config conntrack
      nftables iptables ipset iproute2 acl socat ethtool skopeo umoci openssl curl jq uidmap)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
