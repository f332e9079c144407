#!/usr/bin/env bash
# Certificates and kubeconfigs for the local cluster, made once and kept until `make down`.
source "$(dirname "$0")/lib.sh"
NODE_IP="$1"
mkdir -p "$PKI_DIR"; cd "$PKI_DIR"
[[ -f .complete && "$(cat .node-ip 2>/dev/null)" == "$NODE_IP" ]] && exit 0
rm -f ./*

openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
  -subj "/CN=codeinterp-ca" 2>/dev/null
openssl genrsa -out sa.key 2048 2>/dev/null
openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null

# cert NAME SUBJECT [SANS]: a key and a certificate signed by the cluster CA.
cert() {
  local name=$1 subj=$2 sans=${3:-} ext
  ext=$(mktemp)
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n $sans ]]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" \
    -days 3650 -extfile "$ext" 2>/dev/null
  rm -f "$name.csr" "$ext"
}

cert apiserver "/CN=kube-apiserver" \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:$NODE_NAME,IP:127.0.0.1,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert admin "/O=system:masters/CN=kubernetes-admin"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
cert kube-proxy "/O=system:node-proxier/CN=system:kube-proxy"
cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME"
cert kubelet-serving "/O=system:nodes/CN=system:node:$NODE_NAME" "DNS:$NODE_NAME,DNS:localhost,IP:$NODE_IP,IP:127.0.0.1"
# kube-router's firewall watches pods, namespaces, nodes and network policies cluster-wide.
cert kube-router "/O=system:masters/CN=kube-router"

kubeconfig() {
  local name=$1 server=$2
  cat >"$name.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: codeinterp
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 ca.crt)
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$name.crt")
    client-key-data: $(base64 -w0 "$name.key")
contexts:
- name: codeinterp
  context: {cluster: codeinterp, user: $name}
current-context: codeinterp
KC
}
local_api="https://127.0.0.1:$API_PORT"
for n in admin controller-manager scheduler kube-proxy kubelet-client kube-router; do
  kubeconfig "$n" "$local_api"
done
echo "$NODE_IP" > .node-ip
touch .complete
