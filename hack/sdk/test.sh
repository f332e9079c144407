#!/usr/bin/env bash
# The Python SDK's tests: `unit` (no server) or `live` (against the API `make up` leaves at
# http://localhost:8080 with the development key; OpenAI's own SDK included, for its
# containers.* calls). The SDK is installed from the checkout into
# a virtualenv kept outside the repository, so a second run installs nothing new.
#   hack/sdk/test.sh unit|live [pytest args...]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV=/var/cache/codeinterp/venv-sdk
which=${1:?unit or live}; shift
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check pytest openai==3.57.0 "$REPO_ROOT/clients/python"
cd "$REPO_ROOT/clients/python"
case $which in
  unit) exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests -k 'not live' "$@" ;;
  live)
    export CODEINTERP_URL=${CODEINTERP_URL:-http://localhost:8080}
    export CODEINTERP_API_KEY=${CODEINTERP_API_KEY:-dev_123}
    export PATH="$VENV/bin:$PATH"
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/test_live.py tests/test_live_containers.py tests/test_live_openai.py "$@" ;;
  *) echo "unit or live" >&2; exit 2 ;;
esac
