#!/usr/bin/env bash
# CI stage: the README's "A network with a ledger" walkthrough, as written, on one machine:
# examples/ledger-walkthrough.sh with the debug binary (five nodes, genesis, balance, transfer,
# stake, unstake). It fails if the script fails; every wait in it is bounded and the whole stage
# is capped, so it always stops by itself. Token files go to a temporary XDG_DATA_HOME.
# Run alone: bash .ci/stage-walkthrough.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x target/debug/agora ]; then
    cargo build --locked -p agora-cli
fi
xdg=$(mktemp -d "${TMPDIR:-/tmp}/agora-walkthrough-xdg.XXXXXX")
trap 'rm -rf "$xdg"' EXIT
# SIGTERM at the cap runs the script's trap, which stops its nodes; SIGKILL 30 s later at worst.
XDG_DATA_HOME="$xdg" AGORA=target/debug/agora WAIT_SECS=120 \
    timeout --kill-after=30 900 bash examples/ledger-walkthrough.sh
