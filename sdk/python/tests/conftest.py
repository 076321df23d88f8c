"""A live `agora devnet` for the tests that need one (fixture ``devnet``).

The devnet runs 5 nodes with their ledger, in a fresh directory, with ``XDG_DATA_HOME`` pointed
into it, so the token files the nodes write (``$XDG_DATA_HOME/agora/api/<ip>_<port>.token``)
are the ones the SDK finds, and nothing is written to the user's own data dir. The binary is
``$AGORA_BIN``, else the repository's ``target/debug/agora``. Each node's API address is read
from its log (``HTTP API listening addr=...``), else from its command line. At the end the
devnet is stopped (SIGTERM), then its whole process group (SIGKILL).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Sequence

import pytest

from agora_sdk import AgoraError, Client

REPO = Path(__file__).resolve().parents[3]
NODES = 5
#: Generous: a loaded 2-core machine running a debug build.
START_TIMEOUT_S = float(os.environ.get("AGORA_TEST_START_TIMEOUT", "180"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LISTENING = re.compile(r"HTTP API listening.*?addr=\[?([0-9a-fA-F.:]+?)\]?:(\d+)")


@dataclass
class Devnet:
    """A running devnet: its directory and every node's API address (node 0 first)."""

    base: Path
    xdg: Path
    apis: List[str]
    log: Path
    proc: "subprocess.Popen[bytes]" = field(repr=False)

    def client(self, index: int = 0, **kw: object) -> Client:
        return Client(self.apis[index], **kw)  # type: ignore[arg-type]

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for p in [self.log, *sorted(self.base.glob("node-*/node.log"))]:
            try:
                text = ANSI.sub("", p.read_text(errors="replace")).splitlines()
            except OSError:
                continue
            out.append(f"--- {p}\n" + "\n".join(text[-lines:]))
        return "\n".join(out)


def _binary() -> Path:
    exe = Path(os.environ.get("AGORA_BIN") or REPO / "target" / "debug" / "agora")
    if not exe.is_file():
        pytest.fail(
            f"{exe} is missing: build it with `cargo build --locked -p agora-cli` "
            "(or point AGORA_BIN at an agora binary)",
            pytrace=False,
        )
    return exe


def _api_from_log(node_log: Path) -> str:
    try:
        text = ANSI.sub("", node_log.read_text(errors="replace"))
    except OSError:
        return ""
    m = LISTENING.search(text)
    if m is None:
        return ""
    ip, port = m.group(1), m.group(2)
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _api_from_proc(node_dir: Path) -> str:
    """The ``--api=`` flag of the running ``agora node --data-dir=<node_dir>`` (Linux)."""
    flag = f"--data-dir={node_dir}"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if flag in args:
            for a in args:
                if a.startswith("--api="):
                    return a[len("--api="):]
    return ""


def _api_of(node_dir: Path) -> str:
    """A devnet node's API address: from its log, else from its command line."""
    return _api_from_log(node_dir / "node.log") or _api_from_proc(node_dir)


def _stop(proc: "subprocess.Popen[bytes]") -> None:
    """SIGTERM to the devnet, which stops its nodes; then SIGKILL to its whole process group
    (the nodes are in it), for anything still running."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """5 honest nodes with their ledger (module scope: one devnet runs at a time)."""
    yield from _devnet(tmp_path_factory, "devnet", NODES)


@pytest.fixture(scope="module")
def byzantine_devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    """8 nodes with their ledger, the last 2 Byzantine: they bid normally and return corrupted
    outputs, each its own (``agora node --byzantine``). ``apis`` lists the honest ones first."""
    yield from _devnet(tmp_path_factory, "byzantine", 8, ["--byzantine=2"])


def _devnet(
    tmp_path_factory: pytest.TempPathFactory, name: str, nodes: int, extra: Sequence[str] = ()
) -> Iterator[Devnet]:
    exe = _binary()
    root = tmp_path_factory.mktemp(name)
    base, xdg = root / "nodes", root / "xdg"
    xdg.mkdir()
    log = root / "devnet.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    env["XDG_DATA_HOME"] = str(xdg)
    env.setdefault("RUST_LOG", "info")
    cmd = [str(exe), "devnet", f"--nodes={nodes}", "--duration=3600", f"--data-dir={base}", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
    net = Devnet(base=base, xdg=xdg, apis=[], log=log, proc=proc)
    mp = pytest.MonkeyPatch()
    try:
        # The SDK in this process finds the nodes' tokens as a user on their machine would.
        for k in ("AGORA_API_TOKEN", "AGORA_DATA_DIR", "AGORA_API"):
            mp.delenv(k, raising=False)
        mp.setenv("XDG_DATA_HOME", str(xdg))
        _wait_ready(net, nodes)
        yield net
    finally:
        mp.undo()
        _stop(proc)


def _wait_ready(net: Devnet, nodes: int) -> None:
    """Every node's API answers and node 0 sees all the others."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if net.proc.poll() is not None:
            pytest.fail(f"agora devnet exited ({net.proc.returncode}):\n{net.log_tail()}",
                        pytrace=False)
        apis = [_api_of(net.base / f"node-{i}") for i in range(nodes)]
        if all(apis):
            net.apis = apis
            try:
                if net.client(0, timeout=10).status().connected_peers >= nodes - 1:
                    return
            except AgoraError:
                pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"the devnet was not ready within {START_TIMEOUT_S:g} s (APIs {apis}):\n"
                f"{net.log_tail()}",
                pytrace=False,
            )
        time.sleep(1)
