#!/usr/bin/env bash
# Time from creating a one-line pod to reading its log back through the API, N times
# (default 20); prints every sample and the median in milliseconds.
source "$(dirname "$0")/lib.sh"
N=${1:-20}
K() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
ns=latency-$RANDOM
K create namespace "$ns" >/dev/null
trap 'K delete namespace "$ns" --wait=false >/dev/null' EXIT
samples=()
for i in $(seq "$N"); do
  start=$(date +%s%N)
  K -n "$ns" run "p$i" --image=localhost/codeinterp/runner-python:dev --image-pull-policy=Never \
    --restart=Never --command -- python3 -c 'print(1)' >/dev/null
  K -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded "pod/p$i" --timeout=60s >/dev/null
  out=$(K -n "$ns" logs "p$i")
  end=$(date +%s%N)
  [[ $out == 1 ]] || die "unexpected log: $out"
  samples+=($(((end - start) / 1000000)))
done
echo "samples_ms: ${samples[*]}"
printf '%s\n' "${samples[@]}" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; print "median_ms:", m}'
