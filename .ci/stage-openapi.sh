#!/usr/bin/env bash
# The HTTP API's OpenAPI document: the one `agora api openapi` prints and the one a running node
# serves at GET /v1/openapi.json must be the same, and must validate as OpenAPI 3.1 with
# openapi-spec-validator (from .ci/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x target/debug/agora ]; then
    cargo build --locked -p agora-cli
fi
VENV=$(cd "$(bash .ci/venv.sh)" && pwd)
agora=target/debug/agora
out=target/openapi
mkdir -p "$out"

"$agora" api openapi >"$out/printed.json"

# A node on loopback, on free ports, with a throwaway data dir.
tmp=$(mktemp -d)
node_pid=""
cleanup() {
    if [ -n "$node_pid" ]; then
        kill "$node_pid" 2>/dev/null || true
        wait "$node_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
read -r api_port tcp_port udp_port < <("$VENV/bin/python" - <<'PY'
import socket
socks = []
for kind in (socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(*(s.getsockname()[1] for s in socks))
PY
)
"$agora" node --preset=local --data-dir="$tmp/node" --no-mdns \
    --listen="/ip4/127.0.0.1/tcp/$tcp_port" --listen="/ip4/127.0.0.1/udp/$udp_port/quic-v1" \
    --api="127.0.0.1:$api_port" >"$tmp/node.log" 2>&1 &
node_pid=$!
served="$out/served.json"
for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$api_port/v1/openapi.json" -o "$served" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$node_pid" 2>/dev/null; then
        echo "the node exited at start; its log:" >&2
        cat "$tmp/node.log" >&2
        exit 1
    fi
    sleep 0.1
done
if [ ! -s "$served" ]; then
    echo "the node did not serve /v1/openapi.json within 30 s; its log:" >&2
    tail -n 50 "$tmp/node.log" >&2
    exit 1
fi

"$VENV/bin/python" - "$out/printed.json" "$served" <<'PY'
import json, sys
printed, served = (json.load(open(p)) for p in sys.argv[1:3])
assert printed == served, "agora api openapi and GET /v1/openapi.json differ"
assert served["openapi"].startswith("3.1"), served["openapi"]
print(f"openapi {served['openapi']}: {len(served['paths'])} paths, "
      f"{len(served['components']['schemas'])} schemas")
PY
"$VENV/bin/openapi-spec-validator" "$served"
