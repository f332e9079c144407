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

# The containers the generated requests made (some of 4g, idle up to a day) would hold the
# node's memory long after the run, and the cluster's state outlives its processes: the next
# `make test` found too little room for its admission test. Every container the key still
# has running is deleted when the run ends, whatever its result.
delete_containers() {
  python3 - "$URL" "$KEY" <<'PY'
import json, sys, urllib.request
url, key = sys.argv[1], sys.argv[2]
def call(method, path):
    req = urllib.request.Request(url + path, method=method,
                                 headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=120) as answer:
        return json.load(answer)
ids, after = [], None
while True:
    page = call("GET", "/v1/containers?limit=100" + (f"&after={after}" if after else ""))
    ids += [c["id"] for c in page["data"] if c.get("status") == "running"]
    if not page.get("has_more"):
        break
    after = page["last_id"]
for i in ids:
    try:
        call("DELETE", f"/v1/containers/{i}")
    except Exception as e:
        print(f"schemathesis: could not delete container {i}: {e}", file=sys.stderr)
print(f"schemathesis: deleted {len(ids)} containers left running", file=sys.stderr)
PY
}
trap delete_containers EXIT
"$VENV/bin/st" --config-file "$HERE/schemathesis.toml" run "$URL/openapi.json" \
  --header "Authorization: Bearer $KEY" \
  --report junit --report-dir "$REPORTS" \
  "${seed[@]}" "$@"
