# Image pipeline helpers: build with buildah (nothing pulled), cache the archive keyed by the
# content that made it, import into the cluster's containerd. Sourced, not run.
source "$(dirname "${BASH_SOURCE[0]}")/../cluster/lib.sh"
IMAGE_CACHE="$CACHE_DIR/images"
mkdir -p "$IMAGE_CACHE"
# One image build at a time on this host: two checkouts (a developer's and CI's, or two
# developers') share the cache and its archives.
exec {IMAGE_LOCK}>"$IMAGE_CACHE/.lock"
flock "$IMAGE_LOCK"

ctr_k8s() { "$CONTAINERD_BIN/ctr" --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# content_key FILE...: a short hash of the files' contents (directories recursively).
content_key() {
  find "$@" -type f -print0 | sort -z | xargs -0 sha256sum | awk '{print $1}' | sha256sum | cut -c1-16
}

# import_archive REF ARCHIVE KEY: load into containerd unless the image there was made from
# the same content (KEY, kept as a label on the image).
import_archive() {
  local ref=$1 archive=$2 key=$3
  [[ -S $CONTAINERD_SOCK ]] || return 0 # the cluster is not up; `make up` imports later
  if ctr_k8s images ls "name==$ref" 2>/dev/null | grep -q "codeinterp.dev/key=$key"; then
    return 0
  fi
  log "importing $ref into containerd"
  ctr_k8s images import "$archive" >/dev/null
  ctr_k8s images label "$ref" "codeinterp.dev/key=$key" >/dev/null
}

# buildah_archive REF ARCHIVE: save a buildah image as a docker-archive named REF (an archive
# without a name imports nothing into containerd).
buildah_archive() {
  local ref=$1 archive=$2
  rm -f "$archive.tmp"
  buildah push --quiet "$ref" "docker-archive:$archive.tmp:$ref" >/dev/null
  mv "$archive.tmp" "$archive"
}
