#!/usr/bin/env bash
# "A network with a ledger" (README.md) on one machine: five nodes, four of them validators, with
# a genesis written by `agora genesis`; then a balance, a transfer, a stake and an unstake.
#
# On one machine each node needs its own data directory, its own P2P (--listen), API (--api) and
# consensus (--consensus-listen) ports, and the `local` preset: the `production` preset accepts at
# most 3 connections per IP address, so on one IP the fifth node would be left without peers.
#
#   bash examples/ledger-walkthrough.sh          # AGORA=path/to/agora to pick the binary
#
# Everything lives in a fresh temporary directory, removed at the end (KEEP=1 keeps it, with each
# node's log). Every wait is bounded; the nodes are stopped on any exit, Ctrl-C included.
set -euo pipefail

AGORA=${AGORA:-target/debug/agora}
BASE_PORT=${BASE_PORT:-}      # node i uses BASE_PORT+10*i (P2P), +1 (API), +2 (consensus)
WAIT_SECS=${WAIT_SECS:-120}   # the bound on each wait below

if [ ! -x "$AGORA" ]; then
    echo "no agora binary at $AGORA: build it (cargo build -p agora-cli) or set AGORA=" >&2
    exit 1
fi
command -v curl >/dev/null || { echo "this script needs curl (apt-get install curl)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/agora-walkthrough.XXXXXX")
pids=()
stop_all() {
    local status=$?
    trap - EXIT INT TERM
    if [ "${#pids[@]}" -gt 0 ]; then
        echo "== stopping ${#pids[@]} nodes"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        # A node stops within 5 s of SIGTERM; give it 15, then kill what is left.
        local p alive
        for _ in $(seq 150); do
            alive=0
            for p in "${pids[@]}"; do
                if kill -0 "$p" 2>/dev/null; then alive=1; fi
            done
            [ "$alive" = 1 ] || break
            sleep 0.1
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ]; then
        for i in 1 2 3 4 5; do
            [ -f "$work/n$i/node.log" ] || continue
            echo "-- last lines of node $i's log ($work/n$i/node.log):" >&2
            tail -n 15 "$work/n$i/node.log" >&2
        done
    fi
    if [ "${KEEP:-0}" = 1 ] || [ "$status" -ne 0 ]; then
        echo "data directories and logs kept in $work" >&2
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Ports: five blocks of three, on a base where nothing listens yet, below the kernel's range of
# ephemeral ports (where an outgoing connection may hold the port).
in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_base() {
    local base p try low=32768 slots
    if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
        read -r low _ </proc/sys/net/ipv4/ip_local_port_range
    fi
    slots=$(((low - 10100) / 100))
    [ "$slots" -gt 0 ] || slots=1
    for try in $(seq 20); do
        base=$((10000 + (RANDOM % slots) * 100))
        for p in $(seq $((base + 10)) $((base + 52))); do
            if in_use "$p"; then continue 2; fi
        done
        echo "$base"
        return 0
    done
    echo "no free port range found" >&2
    return 1
}
[ -n "$BASE_PORT" ] || BASE_PORT=$(pick_base)
p2p() { echo $((BASE_PORT + 10 * $1)); }
api() { echo "127.0.0.1:$((BASE_PORT + 10 * $1 + 1))"; }
cons() { echo "127.0.0.1:$((BASE_PORT + 10 * $1 + 2))"; }

# Waits until `$@` succeeds, at most WAIT_SECS; $1 says what it waits for.
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + WAIT_SECS))
    local p
    until "$@" >/dev/null 2>&1; do
        for p in "${pids[@]}"; do
            if ! kill -0 "$p" 2>/dev/null; then
                echo "a node exited while waiting for $what (see its log below)" >&2
                return 1
            fi
        done
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "gave up after $WAIT_SECS s waiting for $what" >&2
            return 1
        fi
        sleep 0.5
    done
}

# A field of a one-line JSON object, e.g. json_field balance '{"balance":5}' -> 5.
json_field() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p" <<<"$2"; }

echo "== identities (agora id --data-dir), in $work"
declare -a peer
for i in 1 2 3 4 5; do
    peer[i]=$("$AGORA" id --data-dir "$work/n$i")
    echo "node $i: ${peer[i]}  p2p $(p2p "$i")  api $(api "$i")  consensus $(cons "$i")"
done

echo "== genesis: nodes 1-4 validate, node 5 is a funded account"
"$AGORA" genesis --out "$work/genesis.json" --chain-id walkthrough \
    --validator "${peer[1]}@$(cons 1)" --validator "${peer[2]}@$(cons 2)" \
    --validator "${peer[3]}@$(cons 3)" --validator "${peer[4]}@$(cons 4)" \
    --account "${peer[5]}"

echo "== five nodes (local preset, loopback only)"
bootstrap="/ip4/127.0.0.1/tcp/$(p2p 1)/p2p/${peer[1]}"
for i in 1 2 3 4 5; do
    args=(node --preset local --data-dir "$work/n$i" --no-mdns
        --listen "/ip4/127.0.0.1/tcp/$(p2p "$i")" --api "$(api "$i")"
        --genesis "$work/genesis.json" --consensus-listen "$(cons "$i")")
    [ "$i" -eq 1 ] || args+=(--bootstrap "$bootstrap")
    echo "agora ${args[*]}"
    "$AGORA" "${args[@]}" >"$work/n$i/node.log" 2>&1 </dev/null &
    pids+=("$!")
done
for i in 1 2 3 4 5; do
    wait_for "node $i's API on $(api "$i")" "$AGORA" status --api "$(api "$i")"
done

# Every node, the fifth included, connected to the four others.
all_connected() {
    local i s
    for i in 1 2 3 4 5; do
        s=$("$AGORA" status --api "$(api "$i")" --json) || return 1
        [ "$(json_field connected_peers "$s")" -ge 4 ] || return 1
    done
}
wait_for "every node to see its 4 peers" all_connected
echo "every node sees its 4 peers"

height() { json_field height "$(curl -sf "http://$(api "$1")/v1/ledger/status")"; }
blocks_on_node5() { [ "$(height 5)" -ge 3 ]; }
wait_for "node 5 to follow 3 blocks" blocks_on_node5
echo "ledger height $(height 1) on node 1, $(height 5) on node 5"

echo "== agora wallet balance (node 5)"
"$AGORA" wallet balance --api "$(api 5)"
before=$(json_field balance "$("$AGORA" wallet balance --api "$(api 5)" --json)")

echo "== agora wallet transfer: node 1 sends 500 to node 5"
"$AGORA" wallet transfer --api "$(api 1)" "${peer[5]}" 500
received() {
    local b
    b=$(json_field balance "$("$AGORA" wallet balance --api "$(api 5)" --json)")
    [ "$b" -eq $((before + 500)) ]
}
wait_for "node 5 to see the 500 it received" received

echo "== agora wallet stake 1000 && agora wallet unstake 200 (node 5)"
stake_before=$(json_field stake "$("$AGORA" wallet balance --api "$(api 5)" --json)")
"$AGORA" wallet stake --api "$(api 5)" 1000
"$AGORA" wallet unstake --api "$(api 5)" 200
after=$("$AGORA" wallet balance --api "$(api 5)" --json)
if [ "$(json_field stake "$after")" -ne $((stake_before + 800)) ] ||
    [ "$(json_field unbonding "$after")" -ne 200 ]; then
    echo "unexpected stake after stake 1000, unstake 200 (stake was $stake_before): $after" >&2
    exit 1
fi

echo "== agora wallet balance and history (node 5)"
"$AGORA" wallet balance --api "$(api 5)"
"$AGORA" wallet history --api "$(api 5)"
echo "== the walkthrough worked"
