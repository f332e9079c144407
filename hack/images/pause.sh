#!/usr/bin/env bash
# The pod sandbox ("pause") image, built from the pause.c that ships in the Kubernetes source:
# no registry is reachable, and containerd needs it before the first pod.
source "$(dirname "$0")/lib.sh"
REF=localhost/codeinterp/pause:3.10.2
SRC="$CACHE_DIR/src/kubernetes-$KUBERNETES_VERSION/build/pause/linux/pause.c"
archive="$IMAGE_CACHE/pause-3.10.2-$KUBERNETES_VERSION.tar"
if [[ ! -f $archive ]]; then
  log "building $REF"
  tmp=$(mktemp -d)
  gcc -Os -static -DVERSION=v3.10.2 -o "$tmp/pause" "$SRC"
  strip "$tmp/pause"
  ctr=$(buildah from scratch)
  buildah copy "$ctr" "$tmp/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  buildah commit --quiet "$ctr" "$REF" >/dev/null
  buildah rm "$ctr" >/dev/null
  buildah_archive "$REF" "$archive"
  rm -rf "$tmp"
fi
import_archive "$REF" "$archive" "pause-3.10.2-$KUBERNETES_VERSION"
