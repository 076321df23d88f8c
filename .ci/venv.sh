#!/usr/bin/env bash
# Creates (once) the Python virtual environment that CI's test tools run in, from
# .ci/requirements.txt, and prints its directory. Usage: VENV=$(bash .ci/venv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AGORA_CI_VENV:-target/ci-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
stamp="$venv/.requirements"
if ! cmp -s .ci/requirements.txt "$stamp" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r .ci/requirements.txt >&2
    cp .ci/requirements.txt "$stamp"
fi
echo "$venv"
