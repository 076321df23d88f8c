"""Tests without a node: token discovery, the wire format, errors, tolerant parsing.

A small HTTP server in a thread plays the node and records what the client sends.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from agora_sdk import AgoraError, Client, JobStatus, LedgerStatus, find_token
from agora_sdk import token as token_mod

Handler = Callable[[str, str, Dict[str, str], bytes], Tuple[int, Any]]


class FakeNode:
    """Answers each request with ``handler(method, path, headers, body)``, keeps every request."""

    def __init__(self, handler: Handler, port: int = 0) -> None:
        self.requests: List[Dict[str, Any]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append(
                    {"method": self.command, "path": self.path, "headers": headers, "body": body}
                )
                status, answer = handler(self.command, self.path, headers, body)
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), H)
        self.port = self.server.server_address[1]
        self.api = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No token in the environment; the default data dir under tmp_path."""
    for k in ("AGORA_API_TOKEN", "AGORA_DATA_DIR", "AGORA_API"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "agora"


@pytest.fixture
def fake() -> Iterator[Callable[[Handler], FakeNode]]:
    nodes: List[FakeNode] = []

    def make(handler: Handler) -> FakeNode:
        n = FakeNode(handler)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.close()


# --- token discovery ---------------------------------------------------------------------


def test_address_file_names() -> None:
    assert token_mod.address_file_name("127.0.0.1:7460") == "127.0.0.1_7460.token"
    assert token_mod.address_file_name("localhost:7461") == "127.0.0.1_7461.token"
    assert token_mod.address_file_name("http://127.0.0.1:7462/") == "127.0.0.1_7462.token"
    assert token_mod.address_file_name("[::1]:7460") == "__1_7460.token"
    assert token_mod.address_file_name("node.example:7460") is None


def test_default_data_dir_follows_xdg_then_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/x")
    assert token_mod.default_data_dir() == Path("/x/agora")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", "/h")
    assert token_mod.default_data_dir() == Path("/h/.local/share/agora")


def test_token_order(clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    api = "127.0.0.1:7460"
    assert find_token(api) is None
    # 3. <default data dir>/api.token
    clean_env.mkdir(parents=True)
    (clean_env / "api.token").write_text("from-data-dir\n")
    assert find_token(api) == "from-data-dir"
    # AGORA_DATA_DIR replaces the default data dir for that file.
    other = tmp_path / "other"
    other.mkdir()
    (other / "api.token").write_text("from-agora-data-dir")
    monkeypatch.setenv("AGORA_DATA_DIR", str(other))
    assert find_token(api) == "from-agora-data-dir"
    # 2. the per-address file wins over it (and only for its address).
    (clean_env / "api").mkdir()
    (clean_env / "api" / "127.0.0.1_7460.token").write_text("per-address")
    assert find_token(api) == "per-address"
    assert find_token("localhost:7460") == "per-address"
    assert find_token("127.0.0.1:7999") == "from-agora-data-dir"
    # The data dir's token names no address: never sent to another host.
    assert find_token("192.0.2.7:7460") is None
    assert find_token("node.example:7460") is None
    # 1. the environment wins over everything.
    monkeypatch.setenv("AGORA_API_TOKEN", "from-env")
    assert find_token(api) == "from-env"
    assert Client(api).token == "from-env"
    assert Client(api, token="explicit").token == "explicit"


# --- the wire ----------------------------------------------------------------------------


def test_requests_carry_bearer_and_json(clean_env: Path, fake: Any) -> None:
    def handler(method: str, path: str, h: Dict[str, str], body: bytes) -> Tuple[int, Any]:
        if path == "/v1/blobs":
            return 201, {"hash": "ab" * 32, "size": len(body)}
        if path == "/v1/jobs":
            return 201, {"id": "cd" * 32}
        return 404, {"error": "nope"}

    node = fake(handler)
    c = Client(node.api, token="t0k3n")
    job = c.submit(b"\0asm\x01\0\0\0", input="100\n", redundancy=2, max_price=7, args=["-v"])
    assert job == "cd" * 32
    blob_mod, blob_in, sub = node.requests
    for r in node.requests:
        assert r["headers"]["authorization"] == "Bearer t0k3n"
        assert r["method"] == "POST"
    assert blob_mod["headers"]["content-type"] == "application/octet-stream"
    assert blob_mod["body"] == b"\0asm\x01\0\0\0"
    assert blob_in["body"] == b"100\n"
    assert sub["headers"]["content-type"] == "application/json"
    spec = json.loads(sub["body"])
    assert spec == {
        "module": "ab" * 32,
        "input": "ab" * 32,
        "args": ["-v"],
        "redundancy": 2,
        "max_price": 7,
    }


def test_submit_reads_files_and_refuses_non_wasm(clean_env: Path, fake: Any,
                                                 tmp_path: Path) -> None:
    node = fake(lambda m, p, h, b: (201, {"hash": "ee" * 32, "size": len(b), "id": "j"}))
    c = Client(node.api, token="t")
    wasm = tmp_path / "m.wasm"
    wasm.write_bytes(b"\0asmXXXX")
    inp = tmp_path / "in.txt"
    inp.write_bytes(b"file input")
    assert c.submit(str(wasm), input=inp) == "j"
    assert node.requests[0]["body"] == b"\0asmXXXX"
    assert node.requests[1]["body"] == b"file input"
    text = tmp_path / "not.wasm"
    text.write_text("hello")
    with pytest.raises(AgoraError, match="not WebAssembly"):
        c.submit(text)
    with pytest.raises(AgoraError, match="cannot read module"):
        c.submit(tmp_path / "missing.wasm")


def test_error_body_becomes_agora_error(clean_env: Path, fake: Any) -> None:
    node = fake(lambda m, p, h, b: (404, {"error": "no job 00 on this node"}))
    with pytest.raises(AgoraError) as e:
        Client(node.api).job("00")
    assert e.value.status == 404
    assert e.value.message == "no job 00 on this node"


def test_401_rereads_a_changed_token_file_once(clean_env: Path, fake: Any) -> None:
    def handler(method: str, path: str, h: Dict[str, str], body: bytes) -> Tuple[int, Any]:
        if h.get("authorization") == "Bearer new":
            return 200, {"peer_id": "p", "connected_peers": 4, "added_later": True}
        return 401, {"error": "this request needs the node's API token"}

    node = fake(handler)
    files = clean_env / "api"
    files.mkdir(parents=True)
    f = files / f"127.0.0.1_{node.port}.token"
    f.write_text("old")
    c = Client(node.api)
    assert c.token == "old"
    f.write_text("new")  # the node restarted with a new token
    s = c.status()
    assert (s.peer_id, s.connected_peers, s.raw["added_later"]) == ("p", 4, True)
    assert c.token == "new"
    # An explicit token is never replaced.
    with pytest.raises(AgoraError) as e:
        Client(node.api, token="wrong").status()
    assert e.value.status == 401
    assert "token" in e.value.message


def test_unreachable_node_says_what_to_do(clean_env: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(AgoraError) as e:
        Client(f"127.0.0.1:{port}", timeout=5).status()
    assert e.value.status is None
    assert "is `agora node` running?" in e.value.message


def test_wallet_timeout_answer_raises_202(clean_env: Path, fake: Any) -> None:
    node = fake(lambda m, p, h, b: (202, {"error": "transaction 1 is not in a block after 10 s"}))
    with pytest.raises(AgoraError) as e:
        Client(node.api, token="t").stake(5)
    assert e.value.status == 202
    assert node.requests[0]["path"] == "/v1/wallet/stake?wait=true"
    assert json.loads(node.requests[0]["body"]) == {"amount": 5}


# --- tolerant parsing --------------------------------------------------------------------


def test_types_keep_unknown_and_default_missing_fields() -> None:
    j = JobStatus.from_json(
        {
            "id": "x",
            "state": "bidding",
            "reason": "waiting for bids",
            "summary": {"id": "x", "state": "bidding", "bids": 2, "results": 0, "new": 1},
            "brand_new_field": [1, 2],
        }
    )
    assert (j.state, j.reason, j.is_final) == ("bidding", "waiting for bids", False)
    assert j.summary is not None and j.summary.bids == 2 and j.summary.raw["new"] == 1
    assert j.raw["brand_new_field"] == [1, 2]
    assert j.leases == [] and j.outcome is None
    assert j.progress_line() == "bidding: 2 bids, 0 results - waiting for bids"
    done = JobStatus.from_json(
        {"state": "verified", "outcome": {"Completed": {"exit_code": 3, "output_hash": "h"}}}
    )
    assert done.verified and done.exit_code == 3 and not done.succeeded
    ls = LedgerStatus.from_json(
        {"height": 9, "validators": [{"id": "v", "power": 3}], "supply": {"conserved": True}}
    )
    assert ls.height == 9 and ls.validators[0].power == 3
    assert ls.supply is not None and ls.supply.conserved
    with pytest.raises(AgoraError, match="JobStatus"):
        JobStatus.from_json(["not", "an", "object"])


def test_estimate_query_and_answer(clean_env: Path, fake: Any) -> None:
    answer = {
        "redundancy": 3, "max_price": 50, "known_workers": 4, "capable": 4, "affordable": 4,
        "free": 4, "cheapest_capable": 10, "price_per_replica": {"min": 10, "median": 10,
        "max": 10}, "total": {"min": 30, "median": 30, "max": 30}, "escrow": 250,
        "balance": 1000, "can_run": True, "reason": None,
    }
    node = fake(lambda m, p, h, b: (200, answer))
    e = Client(node.api).estimate(redundancy=3, max_price=50, capabilities=["wasm", "gpu"])
    assert node.requests[0]["path"] == (
        "/v1/jobs/estimate?redundancy=3&max_price=50&capabilities=wasm%2Cgpu"
    )
    assert e.can_run and e.total is not None and e.total.median == 30 and e.escrow == 250


def test_wait_rides_out_a_node_restart(clean_env: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    polls: List[str] = []

    def handler(method: str, path: str, h: Dict[str, str], body: bytes) -> Tuple[int, Any]:
        polls.append(path)
        state = "verified" if len(polls) >= 2 else "running"
        return 200, {"id": "j", "state": state, "summary": {"bids": 3, "results": len(polls)}}

    # The node comes up 2 s after the client starts waiting on it.
    started: List[FakeNode] = []
    later = threading.Timer(2.0, lambda: started.append(FakeNode(handler, port)))
    later.start()
    try:
        seen: List[str] = []
        st = Client(f"127.0.0.1:{port}", timeout=5).wait(
            "j", timeout=60, poll=0.1, progress=lambda s: seen.append(s.state)
        )
        assert st.verified and seen == ["running", "verified"]
    finally:
        later.join()
        for n in started:
            n.close()


def test_redirects_are_not_followed(clean_env: Path, fake: Any) -> None:
    elsewhere = fake(lambda m, p, h, b: (200, {"peer_id": "stolen"}))

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://{elsewhere.api}/v1/status")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(AgoraError) as e:
            Client(f"127.0.0.1:{server.server_address[1]}", token="secret").status()
        assert e.value.status == 302
        assert elsewhere.requests == []
    finally:
        server.shutdown()
        server.server_close()
