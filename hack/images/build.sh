#!/usr/bin/env bash
# Runner images: a minimal Debian base made with mmdebstrap, the ci-runner wrapper, one image
# per language from runners/<lang>/Dockerfile, and the containers' image with all four
# (runners/container/Dockerfile). Each archive is cached under a key of the content that made
# it, so a second run rebuilds nothing; the images are imported into the cluster's containerd
# when it is up.
# The operator's and the REST API's images are built the same way from their Dockerfiles.
#   hack/images/build.sh [python|node|ruby|php|container ...]   (default: all, and the services)
source "$(dirname "$0")/lib.sh"

ALL_LANGS=(python node ruby php)
ALL_RUNNERS=("${ALL_LANGS[@]}" container)
LANGS=("$@")
SERVICES=()
[[ ${#LANGS[@]} -gt 0 ]] || { LANGS=("${ALL_RUNNERS[@]}"); SERVICES=(operator apiserver); }
for lang in "${LANGS[@]}"; do
  [[ -f $REPO_ROOT/runners/$lang/Dockerfile ]] || die "no runner image for '$lang' (one of: ${ALL_RUNNERS[*]})"
done
BUILD_LOG_DIR="$IMAGE_CACHE/logs"
mkdir -p "$BUILD_LOG_DIR"

# quietly LOGNAME CMD...: runs CMD with its output in a log file, shown only if it fails.
quietly() {
  local logfile="$BUILD_LOG_DIR/$1.log"; shift
  if ! "$@" >"$logfile" 2>&1; then
    tail -n 40 "$logfile" >&2
    die "$* failed (full log: $logfile)"
  fi
}

# --- the base: Debian $BASE_SUITE, minbase, without documentation -------------------------
BASE_REF="localhost/codeinterp/base:$BASE_SUITE"
BASE_TAR="$IMAGE_CACHE/base-$BASE_SUITE-minbase.tar"
build_base() {
  if [[ ! -f $BASE_TAR || ! -f $BASE_TAR.key ]]; then
    log "bootstrapping Debian $BASE_SUITE (minbase) for $BASE_REF"
    # The dpkg and apt options stay in the image (dpkg.cfg.d, apt.conf.d), so the runner
    # images' own apt-get installs leave out documentation and recommended packages too.
    quietly "base-$BASE_SUITE" mmdebstrap --variant=minbase --mode=root --format=tar \
      --aptopt='APT::Install-Recommends "false"' \
      --aptopt='APT::Install-Suggests "false"' \
      --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' \
      --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-include=/usr/share/locale/locale.alias' \
      --dpkgopt='path-exclude=/usr/share/lintian/*' \
      "$BASE_SUITE" "$BASE_TAR.tmp" \
      "deb http://deb.debian.org/debian $BASE_SUITE main" \
      "deb http://deb.debian.org/debian $BASE_SUITE-updates main" \
      "deb http://deb.debian.org/debian-security $BASE_SUITE-security main"
    sha256sum "$BASE_TAR.tmp" | cut -c1-16 >"$BASE_TAR.key.tmp"
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    mv "$BASE_TAR.key.tmp" "$BASE_TAR.key"
    buildah rmi "$BASE_REF" >/dev/null 2>&1 || true
  fi
  BASE_KEY=$(<"$BASE_TAR.key")
  # The runner images start FROM it: it must be in buildah's storage, and be this one.
  if [[ $(buildah inspect --type image --format '{{index .ImageAnnotations "codeinterp.dev/key"}}' "$BASE_REF" 2>/dev/null) != "$BASE_KEY" ]]; then
    log "importing $BASE_REF into buildah"
    local ctr
    ctr=$(buildah from scratch)
    buildah add --quiet "$ctr" "$BASE_TAR" / >/dev/null
    buildah config --env LANG=C.UTF-8 --cmd /bin/bash --annotation "codeinterp.dev/key=$BASE_KEY" "$ctr"
    buildah commit --quiet --rm "$ctr" "$BASE_REF" >/dev/null
  fi
}

# --- the wrapper ----------------------------------------------------------------------
WRAPPER="$REPO_ROOT/runners/.bin/ci-runner"
build_wrapper() {
  local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
  (cd "$REPO_ROOT" && cargo build --quiet --release --workspace --bins) ||
    die "building ci-runner failed"
  mkdir -p "$(dirname "$WRAPPER")"
  # Copied only when it changed, so the images' keys (and mtimes) stay put.
  if ! cmp -s "$target/release/ci-runner" "$WRAPPER"; then
    cp "$target/release/ci-runner" "$WRAPPER.tmp"
    mv "$WRAPPER.tmp" "$WRAPPER"
  fi
}

# --- one image per language -----------------------------------------------------------
# The RUN steps need an OCI runtime: the cluster's own runc, else one on the PATH.
oci_runtime() {
  if [[ -x $RUNC_BIN/runc ]]; then echo "$RUNC_BIN/runc"; return; fi
  command -v runc || command -v crun ||
    die "no OCI runtime for buildah's RUN steps: build runc first (hack/cluster/build.sh runc)"
}

# kernels_of IMAGE: the kernel drivers the image holds (the containers' image: every language's).
kernels_of() {
  local lang
  if [[ $1 == container ]]; then
    for lang in "${ALL_LANGS[@]}"; do echo "$REPO_ROOT/runners/kernels/$lang"; done
  else
    echo "$REPO_ROOT/runners/kernels/$1"
  fi
}

build_runner() {
  local lang=$1
  local ref="localhost/codeinterp/runner-$lang:dev"
  local dockerfile="$REPO_ROOT/runners/$lang/Dockerfile"
  local key kernels
  mapfile -t kernels < <(kernels_of "$lang")
  key=$(printf '%s %s\n' "$(content_key "$dockerfile" "$WRAPPER" "${kernels[@]}")" "$BASE_KEY" | sha256sum | cut -c1-16)
  local archive="$IMAGE_CACHE/runner-$lang-$key.tar"
  if [[ ! -f $archive ]]; then
    log "building $ref"
    local previous
    previous=$(buildah inspect --type image --format '{{.FromImageID}}' "$ref" 2>/dev/null || true)
    # Host network: only apt-get reaches out, to Debian's archive.
    quietly "runner-$lang" buildah bud --pull=never --layers=false \
      --runtime "$(oci_runtime)" --network=host \
      --build-arg "BASE=$BASE_REF" --annotation "codeinterp.dev/key=$key" \
      -f "$dockerfile" -t "$ref" "$REPO_ROOT/runners"
    buildah_archive "$ref" "$archive"
    # The image this one replaces would linger untagged in buildah's storage.
    if [[ -n $previous ]]; then buildah rmi "$previous" >/dev/null 2>&1 || true; fi
    # Older archives of this language are of no further use.
    find "$IMAGE_CACHE" -maxdepth 1 -name "runner-$lang-*.tar" ! -name "runner-$lang-$key.tar" -delete
  fi
  import_archive "$ref" "$archive" "$key"
}

# --- the operator and the REST API ------------------------------------------------------
build_service() {
  local name=$1
  local ref="localhost/codeinterp/$name:dev"
  local target="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
  (cd "$REPO_ROOT" && cargo build --quiet --release --workspace --bins) ||
    die "building $name failed"
  mkdir -p "$REPO_ROOT/$name/.bin"
  cmp -s "$target/release/$name" "$REPO_ROOT/$name/.bin/$name" || cp "$target/release/$name" "$REPO_ROOT/$name/.bin/$name"
  local key
  key=$(printf '%s %s\n' "$(content_key "$REPO_ROOT/$name/Dockerfile" "$REPO_ROOT/$name/.bin/$name")" "$BASE_KEY" | sha256sum | cut -c1-16)
  local archive="$IMAGE_CACHE/$name-$key.tar"
  if [[ ! -f $archive ]]; then
    log "building $ref"
    quietly "$name" buildah bud --pull=never --layers=false --runtime "$(oci_runtime)" \
      --build-arg "BASE=$BASE_REF" --annotation "codeinterp.dev/key=$key" \
      -f "$REPO_ROOT/$name/Dockerfile" -t "$ref" "$REPO_ROOT/$name"
    buildah_archive "$ref" "$archive"
    find "$IMAGE_CACHE" -maxdepth 1 -name "$name-*.tar" ! -name "$name-$key.tar" -delete
  fi
  import_archive "$ref" "$archive" "$key"
}

build_base
build_wrapper
for lang in "${LANGS[@]}"; do
  build_runner "$lang"
done
for svc in "${SERVICES[@]}"; do
  build_service "$svc"
done
