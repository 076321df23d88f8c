"""The node's web dashboard in headless Chromium, against a live 5-node devnet with a ledger.

Run by CI as `.ci/stage-browser.sh` (it installs Debian's chromium and chromium-driver, builds
`target/debug/agora` and the venv). Alone:
`SE_OFFLINE=true target/ci-venv/bin/python -m pytest -v tests/browser`.

The page is only watched: the job is submitted by the CLI. The test checks that the page lists
peers, shows the job until it is verified, shows the wallet balance change once the job is
settled, saves a screenshot as target/ci-artifacts/dashboard.png, and that a link with a wrong
token is refused. Every process it starts is gone when it ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parents[2]
AGORA = ROOT / "target" / "debug" / "agora"
PRIMES = ROOT / "examples" / "wasm" / "primes.wasm"
ARTIFACTS = ROOT / "target" / "ci-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")

# The machine may be loaded: every wait is generous.
START_TIMEOUT = 120
JOB_TIMEOUT = 300
SETTLE_TIMEOUT = 180

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], Optional[T]], timeout: float, every: float = 0.25) -> T:
    """Calls `probe` until it returns something truthy; fails saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (WebDriverException, OSError, ValueError, KeyError) as e:
            last_error = e
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s (last error: {last_error!r})")


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(api: str, path: str) -> dict:
    status, body = http_get(f"http://{api}{path}")
    if status != 200:
        raise ValueError(f"{path} answered {status}: {body[:200]!r}")
    return json.loads(body)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (Linux /proc)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().split(") ", 1)[1][:1]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(f"{d.name}: {cmd.strip()}")
    return found


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def api_address(node_dir: Path) -> Optional[str]:
    """Node 0's HTTP API address, from its log line or else from its command line."""
    log = node_dir / "node.log"
    if log.exists():
        text = ANSI.sub("", log.read_text(errors="replace"))
        m = re.search(r"HTTP API listening.*?addr=(\S+)", text) or re.search(
            r"addr=(\S+).*HTTP API listening", text
        )
        if m:
            return m.group(1).strip('"')
    for line in processes_mentioning(f"--data-dir={node_dir}"):
        m = re.search(r"--api=(\S+)", line)
        if m:
            return m.group(1)
    return None


class Devnet:
    def __init__(self, base: Path, env: dict[str, str], proc: subprocess.Popen, api: str):
        self.base = base
        self.env = env
        self.proc = proc
        self.api = api

    def agora(self, *args: str, timeout: float = 120) -> str:
        r = subprocess.run(
            [str(AGORA), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert r.returncode == 0, f"agora {' '.join(args)} failed ({r.returncode}): {r.stderr}"
        return r.stdout


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the devnet and its nodes (one process group), SIGKILL what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="agora-browser-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def devnet(tmp: Path) -> Iterator[Devnet]:
    assert AGORA.exists(), f"{AGORA} is missing: run `cargo build -p agora-cli` first"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGORA_")}
    # The nodes' token files go to this test's own default data dir, not the user's.
    env["XDG_DATA_HOME"] = str(tmp / "xdg")
    env["NO_COLOR"] = "1"
    env["RUST_LOG"] = "info"
    base = tmp / "net"
    log = open(tmp / "devnet.log", "wb")
    proc = subprocess.Popen(
        [str(AGORA), "devnet", "--nodes", "5", "--data-dir", str(base), "--duration", "900"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        def node0_api() -> Optional[str]:
            assert proc.poll() is None, (
                f"the devnet exited ({proc.returncode}): "
                + (tmp / "devnet.log").read_text(errors="replace")[-3000:]
            )
            api = api_address(base / "node-0")
            if api and get_json(api, "/v1/status"):
                return api
            return None

        api = wait_for("node 0's API answers", node0_api, START_TIMEOUT)
        yield Devnet(base, env, proc, api)
    finally:
        stop_group(proc)
        log.close()
        left = wait_for_none(str(base))
        assert not left, "processes left behind:\n" + "\n".join(left)


def wait_for_none(text: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    left = processes_mentioning(text)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = processes_mentioning(text)
    return left


@pytest.fixture(scope="module")
def browser(tmp: Path) -> Iterator[webdriver.Chrome]:
    profile = tmp / "chromium-profile"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,2400",
    ]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        left = wait_for_none(str(profile))
        assert not left, "browser processes left behind:\n" + "\n".join(left)


def texts(driver: webdriver.Chrome, css: str) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css)]


def attr(driver: webdriver.Chrome, css: str, name: str) -> Optional[str]:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    return found[0].get_attribute(name) if found else None


def test_dashboard_follows_a_job_to_settlement(devnet: Devnet, browser: webdriver.Chrome, tmp: Path) -> None:
    url = devnet.agora("dashboard", "--api", devnet.api).strip().splitlines()[-1]
    assert url.startswith(f"http://{devnet.api}/?token="), url
    token = url.split("token=", 1)[1]
    assert re.fullmatch(r"[0-9a-f]{64}", token), f"not a 64-hex token: {token!r}"

    browser.get(url)
    assert "Agora node" in browser.title
    wait_for("the page's live feed connects",
             lambda: attr(browser, "#live", "data-live") == "live", START_TIMEOUT)
    status = get_json(devnet.api, "/v1/status")
    assert browser.find_element(By.ID, "peer-id").text == status["peer_id"]

    # Peers: every other node connects to node 0 (the bootstrap peer).
    wait_for("the page lists the 4 other nodes as peers",
             lambda: len(browser.find_elements(By.CSS_SELECTOR, "#peers-body tr[data-peer-id]")) >= 4,
             START_TIMEOUT)
    assert all(r in ("direct", "relayed") for r in texts(browser, "#peers-body td.route"))

    # Wallet and ledger: the devnet runs one; the page shows node 0's account.
    wait_for("the page shows the wallet balance",
             lambda: attr(browser, "#wallet-balance", "data-value"), START_TIMEOUT)
    # The devnet's nodes open credit lines as they learn of workers, so the balance moves
    # for a while: the page must catch up with the API's figure.
    wait_for("the page's wallet balance matches the API's",
             lambda: attr(browser, "#wallet-balance", "data-value")
             == str(get_json(devnet.api, "/v1/wallet")["balance"]), START_TIMEOUT)
    # What the node holds beside its stake: its balance and its credit lines (opening lines
    # moves tokens between the two; paying workers lowers the sum).
    wallet0 = get_json(devnet.api, "/v1/wallet")
    held0 = wallet0["balance"] + wallet0.get("credit_locked", 0)
    wait_for("the page shows blocks",
             lambda: browser.find_elements(By.CSS_SELECTOR, "#blocks tr[data-height]"), START_TIMEOUT)
    assert browser.find_elements(By.CSS_SELECTOR, "#validators tr[data-validator]")

    # A job submitted by the CLI (not the page), followed by the page until it is verified.
    input_file = tmp / "primes-input.txt"
    input_file.write_text("1000\n")
    out = devnet.agora("job", "submit", str(PRIMES), "--input", str(input_file),
                       "--api", devnet.api, "--json")
    job_id = json.loads(out.strip().splitlines()[-1]).get("id")
    assert isinstance(job_id, str) and re.fullmatch(r"[0-9a-f]{64}", job_id), out
    row = f'#jobs-body tr[data-job-id="{job_id}"]'
    wait_for("the job appears in the page", lambda: browser.find_elements(By.CSS_SELECTOR, row), 60)
    wait_for("the page shows the job verified",
             lambda: attr(browser, row, "data-state") == "verified", JOB_TIMEOUT)
    seen = (attr(browser, row, "data-states-seen") or "").split()
    print(f"states the page showed for the job: {seen}")
    assert seen[-1] == "verified"
    assert set(seen) <= {"awaiting_escrow", "bidding", "running", "verified"}, seen
    if len(seen) < 2:
        print("note: the job was verified before the page's first look at it")
    assert texts(browser, f"{row} td.state") == ["verified"]
    assert texts(browser, f"{row} td.verdict")[0].startswith("completed, exit code 0")

    # Its details, by keyboard-usable button.
    browser.find_element(By.CSS_SELECTOR, f"{row} td.job button").click()
    wait_for("the job's details open",
             lambda: attr(browser, "#job-detail", "data-state") == "verified", 30)
    assert browser.find_element(By.CSS_SELECTOR, "#job-detail-body dd.state").text == "verified"
    assert browser.find_element(By.CSS_SELECTOR, "#job-detail-body dd.redundancy").text == "3"
    # The page's timeline shows the whole way, from the lease (straight to standing offers, or
    # after an announcement) to verified, even where the live feed's one-second look missed
    # the early states.
    timeline = browser.find_element(By.ID, "job-detail-body").text
    assert "leased to" in timeline and "verified by" in timeline, timeline
    assert "leasing directly" in timeline or "announced" in timeline, timeline
    assert browser.find_elements(By.CSS_SELECTOR, "#job-detail-body table")
    output = wait_for("the job's verified output shows",
                      lambda: [t for t in texts(browser, "#job-detail-body pre.output") if t], 60)
    assert "= 168" in output[0], f"primes(1000) is 168: {output[0]!r}"

    # Settlement: the workers are paid (from the node's credit lines, or from an escrow whose
    # rest comes back), and the page shows the balance the API gives.
    def settled() -> bool:
        ledger = get_json(devnet.api, "/v1/ledger/status")
        wallet = get_json(devnet.api, "/v1/wallet")
        shown = attr(browser, "#wallet-balance", "data-value")
        held = wallet["balance"] + wallet.get("credit_locked", 0)
        return (ledger["settled_jobs"] >= 1 and wallet["escrows"] == 0 and held < held0
                and shown is not None and int(shown) == wallet["balance"])

    wait_for("the page shows the balance after settlement", settled, SETTLE_TIMEOUT)
    # The ledger panel refreshes on its own poll, which may come a beat after the wallet's.
    wait_for("the page's ledger panel counts the settled job",
             lambda: int(browser.find_element(By.ID, "ledger-settled").text or "0") >= 1, 30)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    # The whole page: the window as tall as the document.
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.set_window_size(1280, min(max(height + 40, 800), 8000))
    browser.execute_script("window.scrollTo(0, 0)")
    assert browser.save_screenshot(str(shot)), "cannot save the screenshot"
    assert shot.stat().st_size > 10_000

    # The assets carry a strict policy.
    req = urllib.request.Request(f"http://{devnet.api}/dashboard/app.js")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/javascript")
        assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")

    # A wrong token, and none, are refused.
    wrong = "0" * 64 if token != "0" * 64 else "1" * 64
    browser.get(f"http://{devnet.api}/?token={wrong}")
    refused = wait_for("the refusal page", lambda: browser.find_elements(By.ID, "refused"), 30)
    assert "needs the node's API token" in refused[0].text
    assert "agora dashboard" in browser.page_source
    assert not browser.find_elements(By.ID, "wallet-balance")
    assert http_get(f"http://{devnet.api}/?token={wrong}")[0] == 401
    assert http_get(f"http://{devnet.api}/")[0] == 401
    assert http_get(url)[0] == 200


def test_send_form_confirms_before_it_transfers(devnet: Devnet, browser: webdriver.Chrome) -> None:
    """The wallet's send form: a bad amount is refused in the page, Cancel sends nothing, and
    Confirm sends the transfer with the page's token (the one POST the page makes)."""
    url = devnet.agora("dashboard", "--api", devnet.api).strip().splitlines()[-1]
    browser.set_window_size(1280, 2400)
    browser.get(url)
    wait_for("the page shows the wallet balance",
             lambda: attr(browser, "#wallet-balance", "data-value"), START_TIMEOUT)
    to = get_json(devnet.api, "/v1/peers")[0]["peer_id"]
    before = get_json(devnet.api, "/v1/wallet")["balance"]

    def fill(amount: str) -> None:
        for field, value in (("send-to", to), ("send-amount", amount)):
            e = browser.find_element(By.ID, field)
            e.clear()
            e.send_keys(value)
        browser.find_element(By.ID, "send-review").click()

    fill("seven")
    assert attr(browser, "#send-result", "data-ok") == "false"
    assert not browser.find_element(By.ID, "send-confirm").is_displayed()

    fill("7")
    confirm = browser.find_element(By.ID, "send-confirm")
    assert confirm.is_displayed()
    assert "7" in confirm.text and to in confirm.text
    browser.find_element(By.ID, "send-cancel").click()
    assert not confirm.is_displayed()

    fill("7")
    browser.find_element(By.ID, "send-confirm-button").click()
    wait_for("the page says the transfer was sent",
             lambda: attr(browser, "#send-result", "data-ok") == "true"
             and browser.find_element(By.ID, "send-result").text.startswith("Sent"), 90)
    after = get_json(devnet.api, "/v1/wallet")["balance"]
    assert after == before - 7, f"one transfer of 7 (and not two): {before} -> {after}"
    wait_for("the page shows the new balance",
             lambda: attr(browser, "#wallet-balance", "data-value") == str(after), 30)
