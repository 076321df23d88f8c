"""The HTTP client for one node's API (standard library only)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union
from urllib.parse import quote, urlencode

from . import token as token_mod
from .errors import AgoraError
from .types import (
    Account,
    Blob,
    Estimate,
    HistoryEvent,
    JobStatus,
    JobSummary,
    LedgerStatus,
    NodeStatus,
    Peer,
    TxOutcome,
)

#: A blob given as its bytes or as a file path (``str`` or ``os.PathLike``).
BytesOrPath = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]
#: A job's input: bytes, a file (``pathlib.Path`` / ``os.PathLike``), or text (``str``).
InputData = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]
#: Called with each status while :meth:`Client.wait` polls.
ProgressCallback = Callable[[JobStatus], None]

DEFAULT_API = "127.0.0.1:7460"
#: How long :meth:`Client.wait` keeps polling a node it cannot reach (e.g. while it restarts).
UNREACHABLE_GRACE_S = 30.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The API never redirects; following one would carry the bearer token elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _read_file(path: "Union[str, os.PathLike[str]]", what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise AgoraError(None, f"cannot read {what} {os.fspath(path)}: {e.strerror or e}") from e


def _as_bytes(data: BytesOrPath, what: str) -> bytes:
    """Bytes as they are; a ``str`` or path-like names a file."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return _read_file(data, what)


def _input_bytes(data: InputData) -> bytes:
    """Bytes as they are; a path-like names a file; a ``str`` is the text itself."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    return _read_file(data, "input")


class Client:
    """A client for one Agora node's HTTP API.

    ``api`` is ``HOST:PORT`` or a URL (default: ``$AGORA_API``, else ``127.0.0.1:7460``).
    ``token`` is the node's API token; when ``None`` it is found as the CLI finds it
    (``AGORA_API_TOKEN``, then the token files the node writes; see :mod:`agora_sdk.token`),
    and found again if the node answers 401 (it makes a new token at each start).
    ``timeout`` is the limit in seconds for one HTTP request.

    Every method raises :class:`AgoraError` on failure.
    """

    def __init__(
        self,
        api: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = 30.0,
    ) -> None:
        api = api or os.environ.get("AGORA_API") or DEFAULT_API
        try:
            scheme, host, port = token_mod.split_api(api)
        except ValueError as e:
            raise AgoraError(None, str(e)) from None
        if scheme not in ("http", "https"):
            raise AgoraError(None, f"{api!r}: only http:// and https:// APIs are supported")
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.api: str = api
        self.base_url: str = f"{scheme}://{netloc}"
        self.timeout: float = timeout
        self._explicit_token = token is not None
        self._token: Optional[str] = token if token is not None else token_mod.find_token(api)
        handlers: List[urllib.request.BaseHandler] = [_NoRedirect()]
        if token_mod.is_loopback(host):
            # A local node is never reached through an HTTP proxy from the environment.
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def token(self) -> Optional[str]:
        """The API token sent as ``Authorization: Bearer``, or ``None`` if none was found."""
        return self._token

    def __repr__(self) -> str:
        return f"Client({self.base_url!r}, token={'set' if self._token else 'none'})"

    # --- transport ---------------------------------------------------------------------

    def _request_once(
        self,
        method: str,
        path: str,
        body: Optional[bytes],
        content_type: Optional[str],
        timeout: float,
    ) -> bytes:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if content_type is not None:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(
            self.base_url + path, data=body, headers=headers, method=method
        )
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                data: bytes = resp.read()
                return data
        except urllib.error.HTTPError as e:
            raise AgoraError(e.code, self._error_message(e)) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise AgoraError(
                    None,
                    f"the node at {self.base_url} did not answer {method} {path} within "
                    f"{timeout:g} s (raise Client(timeout=...))",
                ) from e
            raise AgoraError(
                None,
                f"cannot reach the node at {self.base_url} ({reason}); is `agora node` "
                f"running? (choose the node with Client(api=...) or AGORA_API)",
            ) from e

    @staticmethod
    def _error_message(e: urllib.error.HTTPError) -> str:
        try:
            raw = e.read()
        except OSError:
            raw = b""
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return str(body["error"])
        text = raw.decode("utf-8", "replace").strip()
        return text[:500] or (e.reason if isinstance(e.reason, str) else "no details")

    def _request(
        self,
        method: str,
        path: str,
        body: Optional[bytes] = None,
        content_type: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> bytes:
        limit = self.timeout if timeout is None else timeout
        try:
            return self._request_once(method, path, body, content_type, limit)
        except AgoraError as e:
            if e.status != 401 or self._explicit_token:
                raise
            # The node may have restarted with a new token: look again, retry once if it changed.
            fresh = token_mod.find_token(self.api)
            if fresh is None or fresh == self._token:
                raise
            self._token = fresh
            return self._request_once(method, path, body, content_type, limit)

    def _json(
        self,
        method: str,
        path: str,
        payload: Optional[Dict[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> Any:
        body = None
        content_type = None
        if payload is not None:
            body = json.dumps(payload).encode("utf-8")
            content_type = "application/json"
        raw = self._request(method, path, body, content_type, timeout)
        try:
            return json.loads(raw)
        except ValueError:
            raise AgoraError(
                None, f"{method} {path} answered something that is not JSON: {raw[:200]!r}"
            ) from None

    def _get(self, path: str) -> Any:
        return self._json("GET", path)

    def _post(self, path: str, payload: Dict[str, Any]) -> Any:
        return self._json("POST", path, payload)

    @staticmethod
    def _job_path(job_id: str, tail: str = "") -> str:
        return f"/v1/jobs/{quote(job_id.strip(), safe='')}{tail}"

    # --- node ----------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        """The node's identity, addresses, peer count, uptime, version and price."""
        return NodeStatus.from_json(self._get("/v1/status"))

    def peers(self) -> List[Peer]:
        """The peers with an open connection."""
        return [Peer.from_json(p) for p in _as_list(self._get("/v1/peers"), "/v1/peers")]

    # --- blobs and jobs ------------------------------------------------------------------

    def put_blob(self, data: BytesOrPath) -> str:
        """Stores ``data`` (bytes, or a file path) on the node; returns its hash."""
        return self.put_blob_info(data).hash

    def put_blob_info(self, data: BytesOrPath) -> Blob:
        """Like :meth:`put_blob`, returning the hash and the size."""
        body = _as_bytes(data, "blob")
        raw = self._request("POST", "/v1/blobs", body, "application/octet-stream")
        try:
            blob = Blob.from_json(json.loads(raw))
        except ValueError:
            raise AgoraError(None, f"POST /v1/blobs answered {raw[:200]!r}") from None
        if not blob.hash:
            raise AgoraError(None, f"POST /v1/blobs answered without a hash: {blob.raw}")
        return blob

    def submit(
        self,
        module: Optional[BytesOrPath] = None,
        input: Optional[InputData] = None,
        *,
        args: Sequence[str] = (),
        redundancy: Optional[int] = None,
        max_price: Optional[int] = None,
        fuel: Optional[int] = None,
        memory_bytes: Optional[int] = None,
        wall_time_ms: Optional[int] = None,
        capabilities: Optional[Iterable[str]] = None,
        deadline_secs: Optional[int] = None,
        module_hash: Optional[str] = None,
        input_hash: Optional[str] = None,
        runtime: Optional[str] = None,
        verify: Optional[str] = None,
    ) -> str:
        """Uploads a module and its input and submits the job; returns the job id.

        With ``runtime="onnx"``, ``module`` is an ONNX model and ``input`` one tensor as
        ``.npy`` bytes (``numpy.save``); the output is the model's first output as ``.npy``,
        and ``verify`` says how replicas are compared: ``argmax`` (default), ``topk:K``,
        ``round:N`` or ``exact``. See :meth:`infer`.

        ``module`` is a WebAssembly WASI command, as bytes or a file path (or give the hash
        of one uploaded before as ``module_hash``). ``input`` is its stdin: bytes, a
        ``pathlib.Path``, or a ``str`` taken as the text itself (or ``input_hash``); none
        means empty. The other fields are the API's job spec; ``None`` takes the node's
        default (redundancy 3, max_price 100, fuel 10^10, 256 MiB, 30 s, ``["wasm"]``,
        a 600 s deadline).
        """
        if (module is None) == (module_hash is None):
            raise AgoraError(None, "give exactly one of module= (bytes or a path) and module_hash=")
        if input is not None and input_hash is not None:
            raise AgoraError(None, "give at most one of input= and input_hash=")
        onnx = runtime == "onnx"
        if module is not None:
            code = _as_bytes(module, "module")
            if not onnx and not code.startswith(b"\0asm"):
                where = "" if isinstance(module, (bytes, bytearray, memoryview)) else (
                    f" {os.fspath(module)}"
                )
                raise AgoraError(
                    None,
                    f"the module{where} is not WebAssembly (it does not start with \\0asm); "
                    "compile your program to wasm32-wasi",
                )
            module_hash = self.put_blob(code)
        if input is not None:
            input_hash = self.put_blob(_input_bytes(input))
        spec: Dict[str, Any] = {"module": module_hash, "args": list(args)}
        if input_hash is not None:
            spec["input"] = input_hash
        optional: Dict[str, Any] = {
            "redundancy": redundancy,
            "max_price": max_price,
            "fuel": fuel,
            "memory_bytes": memory_bytes,
            "wall_time_ms": wall_time_ms,
            "capabilities": list(capabilities) if capabilities is not None else None,
            "deadline_secs": deadline_secs,
            "runtime": runtime,
            "verify": verify,
        }
        spec.update({k: v for k, v in optional.items() if v is not None})
        if onnx:
            # An ONNX job takes no arguments: its only input is the tensor.
            spec.pop("args", None)
        answer = self._post("/v1/jobs", spec)
        job_id = answer.get("id") if isinstance(answer, dict) else None
        if not isinstance(job_id, str) or not job_id:
            raise AgoraError(None, f"the node answered without a job id: {answer!r}")
        return job_id

    def estimate(
        self,
        *,
        redundancy: Optional[int] = None,
        max_price: Optional[int] = None,
        memory_bytes: Optional[int] = None,
        wall_time_ms: Optional[int] = None,
        capabilities: Optional[Iterable[str]] = None,
    ) -> Estimate:
        """What a job would cost if submitted now, from the workers' current offers; nothing
        is locked. ``can_run`` and ``reason`` say whether it could run now."""
        query: Dict[str, Any] = {
            "redundancy": redundancy,
            "max_price": max_price,
            "memory_bytes": memory_bytes,
            "wall_time_ms": wall_time_ms,
            "capabilities": ",".join(capabilities) if capabilities is not None else None,
        }
        q = urlencode({k: v for k, v in query.items() if v is not None})
        return Estimate.from_json(self._get("/v1/jobs/estimate" + (f"?{q}" if q else "")))

    def job(self, job_id: str) -> JobStatus:
        """The job's state, the reason it waits or failed, its bids, leases and results."""
        return JobStatus.from_json(self._get(self._job_path(job_id)))

    def jobs(self) -> List[JobSummary]:
        """The jobs this node submitted, newest first."""
        return [JobSummary.from_json(j) for j in _as_list(self._get("/v1/jobs"), "/v1/jobs")]

    def wait(
        self,
        job_id: str,
        timeout: Optional[float] = 600.0,
        progress: Union[bool, ProgressCallback] = False,
        poll: float = 0.5,
    ) -> JobStatus:
        """Polls the job until it is verified or failed; returns its final status.

        ``progress=True`` writes a line to stderr each time the state, counts or reason
        change; a callable is called with every status polled. Raises :class:`AgoraError`
        (``status`` ``None``) if the job is not final after ``timeout`` seconds (``None``
        waits for ever); the job itself goes on. A node out of reach for up to 30 s (a
        restart) is polled again; longer, and the error is raised.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last_line = ""
        started = time.monotonic()
        unreachable_since: Optional[float] = None
        while True:
            try:
                st = self.job(job_id)
            except AgoraError as e:
                # A node that restarts (it resumes its jobs) is out of reach for a few seconds.
                now = time.monotonic()
                if e.status is not None:
                    raise
                unreachable_since = unreachable_since or now
                if now - unreachable_since > UNREACHABLE_GRACE_S or (
                    deadline is not None and now >= deadline
                ):
                    raise
                time.sleep(max(poll, 1.0))
                continue
            unreachable_since = None
            if callable(progress):
                progress(st)
            elif progress:
                line = st.progress_line()
                if line != last_line:
                    elapsed = time.monotonic() - started
                    print(f"[{elapsed:6.1f} s] job {job_id[:12]} {line}", file=sys.stderr,
                          flush=True)
                    last_line = line
            if st.is_final:
                return st
            if deadline is not None and time.monotonic() >= deadline:
                raise AgoraError(
                    None,
                    f"job {job_id} is still {st.state} after {timeout:g} s"
                    + (f" ({st.reason})" if st.reason else "")
                    + "; it goes on: wait again, or cancel it",
                )
            time.sleep(poll)

    def output(self, job_id: str) -> bytes:
        """The verified output (stdout) of a job; 409 if it has none (yet)."""
        return self._request("GET", self._job_path(job_id, "/output"))

    def run(
        self,
        module: BytesOrPath,
        input: Optional[InputData] = None,
        timeout: Optional[float] = 600.0,
        progress: Union[bool, ProgressCallback] = False,
        **spec: Any,
    ) -> bytes:
        """Submits, waits, and returns the verified output; raises if the job failed or its
        program exited non-zero (with the start of its stderr)."""
        job_id = self.submit(module, input, **spec)
        st = self.wait(job_id, timeout=timeout, progress=progress)
        if not st.verified:
            raise AgoraError(None, f"job {job_id} {st.state}: {st.reason or 'no reason given'}")
        if not st.succeeded:
            err = (st.stderr or "").strip()
            raise AgoraError(
                None,
                f"job {job_id} is verified but its program exited {st.exit_code}"
                + (f": {err}" if err else ""),
            )
        return self.output(job_id)

    def infer(
        self,
        model: BytesOrPath,
        input_npy: BytesOrPath,
        verify: Optional[str] = None,
        timeout: Optional[float] = 600.0,
        **spec: Any,
    ) -> bytes:
        """Runs an ONNX model on one input tensor (``.npy`` bytes or a path) across the
        network, verified by ``verify`` (default ``argmax``), and returns the agreed output
        as ``.npy`` bytes (``numpy.load(io.BytesIO(out))``). Raises if the job failed."""
        tensor = _as_bytes(input_npy, "input tensor")
        if not tensor.startswith(b"\x93NUMPY"):
            raise AgoraError(
                None, "the input is not a .npy tensor; write it with numpy.save (or np.save to a BytesIO)"
            )
        job_id = self.submit(model, tensor, runtime="onnx", verify=verify, **spec)
        st = self.wait(job_id, timeout=timeout)
        if not st.verified:
            raise AgoraError(None, f"job {job_id} {st.state}: {st.reason or 'no reason given'}")
        return self.output(job_id)

    def cancel(self, job_id: str) -> None:
        """Cancels a job (404 if the node has no such job)."""
        self._post(self._job_path(job_id, "/cancel"), {})

    # --- ledger and wallet ---------------------------------------------------------------

    def wallet(self) -> Account:
        """This node's account: balance, stake, unbonding, escrowed, nonce."""
        return Account.from_json(self._get("/v1/wallet"))

    def account(self, account_id: str) -> Account:
        """Any account on the ledger, by peer id."""
        return Account.from_json(
            self._get(f"/v1/ledger/accounts/{quote(account_id.strip(), safe='')}")
        )

    def wallet_history(self, limit: int = 50) -> List[HistoryEvent]:
        """This node's account's ledger events, up to ``limit``."""
        answer = self._get(f"/v1/wallet/history?limit={int(limit)}")
        events = answer.get("events") if isinstance(answer, dict) else answer
        return [HistoryEvent.from_json(e) for e in _as_list(events, "/v1/wallet/history")]

    def ledger_status(self) -> LedgerStatus:
        """Height, state root, validators, supply, open escrows, settled jobs."""
        return LedgerStatus.from_json(self._get("/v1/ledger/status"))

    def blocks(self, start: int = 0, limit: int = 100) -> List[Dict[str, Any]]:
        """Block receipts from height ``start`` (at most 500 a call), as JSON objects."""
        answer = self._get(f"/v1/ledger/blocks?from={int(start)}&limit={int(limit)}")
        blocks = answer.get("blocks") if isinstance(answer, dict) else answer
        return [b for b in _as_list(blocks, "/v1/ledger/blocks") if isinstance(b, dict)]

    def _tx(self, path: str, payload: Dict[str, Any], wait: bool) -> TxOutcome:
        # With wait, the node holds the answer up to 30 s for the block: allow longer.
        timeout = max(self.timeout, 60.0) if wait else None
        answer = self._json(
            "POST", f"{path}?wait={'true' if wait else 'false'}", payload, timeout
        )
        if isinstance(answer, dict) and "error" in answer and "tx_id" not in answer:
            # 202: sent, but not in a block in time.
            raise AgoraError(202, str(answer["error"]))
        return TxOutcome.from_json(answer)

    def transfer(self, to: str, amount: int, wait: bool = True) -> TxOutcome:
        """Sends ``amount`` tokens to the account ``to`` (a peer id). With ``wait`` (the
        default) it returns once the transaction is in a block; check ``applied``."""
        return self._tx("/v1/wallet/transfer", {"to": to, "amount": int(amount)}, wait)

    def stake(self, amount: int, wait: bool = True) -> TxOutcome:
        """Moves ``amount`` tokens from the balance into stake."""
        return self._tx("/v1/wallet/stake", {"amount": int(amount)}, wait)

    def unstake(self, amount: int, wait: bool = True) -> TxOutcome:
        """Starts unbonding ``amount`` staked tokens."""
        return self._tx("/v1/wallet/unstake", {"amount": int(amount)}, wait)


def _as_list(value: Any, what: str) -> List[Any]:
    if not isinstance(value, list):
        raise AgoraError(None, f"{what} answered {value!r} where a list was expected")
    return value
