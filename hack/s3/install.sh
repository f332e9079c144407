#!/usr/bin/env bash
# Installs s3s-fs, a small S3-compatible server that keeps buckets as directories, for the
# end-to-end tests of the S3 storage path (e2e/tests/rest_s3.rs). Cached per version: a
# second run does nothing. Prints the binary's path.
set -euo pipefail
# 0.15 and later need Rust 1.96.
S3S_FS_VERSION="${S3S_FS_VERSION:-0.14.1}"
CACHE_DIR="${CODEINTERP_CACHE:-/var/cache/codeinterp}"
ROOT="$CACHE_DIR/tools/s3s-fs-$S3S_FS_VERSION"
BIN="$ROOT/bin/s3s-fs"

if [[ ! -x $BIN ]]; then
  echo "[s3] installing s3s-fs $S3S_FS_VERSION into $ROOT" >&2
  # Its own target directory, so this build never waits on the workspace's lock.
  CARGO_TARGET_DIR="$CACHE_DIR/cargo-target-tools" \
    cargo install s3s-fs --version "=$S3S_FS_VERSION" --locked --features binary --root "$ROOT"
fi
echo "$BIN"
