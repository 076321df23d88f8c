#!/usr/bin/env bash
# The Python SDK (sdk/python): installs it into CI's venv as a user would
# (`pip install ./sdk/python`), type-checks it (mypy --strict), and runs its tests; the live ones
# start a 5-node `agora devnet` with the debug binary and submit examples/wasm/primes.wasm to it,
# and an 8-node devnet with 2 Byzantine workers that runs 100 ONNX jobs checked against onnxruntime.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ ! -x target/debug/agora ]; then
    cargo build --locked -p agora-cli
fi
VENV=$(cd "$(bash .ci/venv.sh)" && pwd)
# A stale setuptools build/ dir could ship deleted modules: build from the sources only.
rm -rf sdk/python/build sdk/python/src/*.egg-info
"$VENV/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./sdk/python
rm -rf sdk/python/build sdk/python/src/*.egg-info

echo "-- mypy --strict"
(cd sdk/python && "$VENV/bin/mypy" && "$VENV/bin/mypy" --strict tests)

echo "-- pytest (against the installed package and a live devnet)"
report="$root/target/sdk-pytest.xml"
rm -f "$report"
# From sdk/python, `import agora_sdk` is the installed copy (the sources are under src/).
(cd sdk/python && AGORA_BIN="$root/target/debug/agora" \
    timeout 2700 "$VENV/bin/python" -m pytest tests -rs -v --junitxml="$report")

# pytest exits 5 when it collects nothing (set -e stops on that already); also refuse a run in
# which the job test did not run and pass, e.g. skipped or deselected.
"$VENV/bin/python" - "$report" <<'PY'
import sys
import xml.etree.ElementTree as ET

cases = list(ET.parse(sys.argv[1]).iter("testcase"))
passed = [c.get("name") for c in cases if not any(ch.tag in ("skipped", "failure", "error") for ch in c)]
skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
print(f"sdk tests: {len(cases)} run, {len(passed)} passed, {len(skipped)} skipped {skipped}")
required = ["test_primes_job_gives_78498", "test_onnx_jobs_agree_with_onnxruntime",
            "test_bad_onnx_jobs_are_refused_with_what_to_fix"]
missing = [r for r in required if r not in passed]
if len(cases) < 10 or missing:
    sys.exit(f"the SDK's tests did not run: expected at least 10, and {missing} among the passed")
PY
