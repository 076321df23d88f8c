#!/usr/bin/env bash
# Creates (once) the Python environment with the baselines `agora bench` compares against
# (Ray, onnxruntime, Flower: bench/requirements.txt) in target/bench-venv, and prints its
# directory. `agora bench` finds it there (or set AGORA_BENCH_PYTHON to another interpreter).
# Usage: bash bench/venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AGORA_BENCH_VENV:-target/bench-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
stamp="$venv/.requirements"
if ! cmp -s bench/requirements.txt "$stamp" 2>/dev/null; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt >&2
    cp bench/requirements.txt "$stamp"
fi
echo "$venv"
