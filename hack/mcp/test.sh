#!/usr/bin/env bash
# The MCP endpoint's end-to-end tests: the official MCP Python SDK (`mcp` on PyPI) against the
# API `make up` leaves at http://localhost:8080 with the development key. The SDK and pytest
# are installed into a virtualenv kept outside the repository, so a second run installs
# nothing new. An unreachable server fails the tests (none skips).
#   hack/mcp/test.sh [pytest args...]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV=/var/cache/codeinterp/venv-mcp
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "mcp>=2.3,<3" pytest
export CODEINTERP_URL=${CODEINTERP_URL:-http://localhost:8080}
export CODEINTERP_API_KEY=${CODEINTERP_API_KEY:-dev_123}
cd "$REPO_ROOT/clients/mcp"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider test_live.py "$@"
