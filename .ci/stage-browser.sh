#!/usr/bin/env bash
# CI stage: the node's web dashboard in a real browser (Debian's chromium, headless, driven by
# selenium through Debian's chromium-driver) against a live 5-node devnet. Saves a screenshot
# as target/ci-artifacts/dashboard.png. Run alone with `bash .ci/stage-browser.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium chromium-driver
fi

cargo build --locked -p agora-cli
VENV=$(bash .ci/venv.sh)
mkdir -p target/ci-artifacts
# Selenium must use the installed driver and never try to download one.
SE_OFFLINE=true "$VENV/bin/python" -m pytest -v -p no:cacheprovider tests/browser
