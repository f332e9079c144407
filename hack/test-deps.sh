#!/usr/bin/env bash
# What the tests need on the host besides the cluster: headless Chromium and its WebDriver for
# the admin page test (e2e/tests/admin.rs), an S3-compatible server for the S3 storage test
# (e2e/tests/rest_s3.rs), and Ruby and PHP beside the host's python3 and node for the runner
# wrapper's kernel tests in all four languages (runners/wrapper/tests/kernel.rs, session.rs).
# Idempotent and quick once installed.
set -euo pipefail
HACK_DIR="$(cd "$(dirname "$0")" && pwd)"

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "[test-deps] installing chromium and chromium-driver" >&2
  # Without a fresh package list apt may not know the packages (or only an old version).
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver >/dev/null
fi

if ! command -v ruby >/dev/null || ! command -v php >/dev/null; then
  echo "[test-deps] installing ruby and php-cli" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ruby php-cli >/dev/null
fi

"$HACK_DIR/s3/install.sh" >/dev/null
