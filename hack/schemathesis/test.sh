#!/usr/bin/env bash
# Schemathesis against the live API `make up` leaves at http://localhost:8080, with the
# development key: every operation of apiserver/openapi.json (as the server serves it) with
# positive and negative cases, boundary values and stateful link sequences, and every check.
# Zero failures passes. Settings (size, seed, the few statuses a schema cannot predict) are in
# schemathesis.toml beside this script; it takes about two minutes. Schemathesis is
# installed into a virtualenv kept outside the repository, as are its reports.
#   hack/schemathesis/test.sh [st run args...]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV=/var/cache/codeinterp/venv-schemathesis
REPORTS=/var/cache/codeinterp/schemathesis
if [[ ! -x $VENV/bin/st ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis>=4.32,<5"
URL=${CODEINTERP_URL:-http://localhost:8080}
KEY=${CODEINTERP_API_KEY:-dev_123}
seed=()
if [[ -n ${SCHEMATHESIS_SEED:-} ]]; then
  seed=(--seed "$SCHEMATHESIS_SEED")
fi
mkdir -p "$REPORTS"
exec "$VENV/bin/st" --config-file "$HERE/schemathesis.toml" run "$URL/openapi.json" \
  --header "Authorization: Bearer $KEY" \
  --report junit --report-dir "$REPORTS" \
  "${seed[@]}" "$@"
