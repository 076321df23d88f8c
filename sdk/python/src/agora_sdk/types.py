"""Typed views of the API's JSON answers.

Each class keeps the fields the SDK knows and the whole answer in ``raw``, so a field added by
a newer node is never lost and a field it drops reads as its default instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Type, TypeVar

from .errors import AgoraError

M = TypeVar("M", bound="Model")

#: The states after which a job no longer changes.
FINAL_STATES = frozenset({"verified", "failed"})


def _nested(cls: Type[M]) -> Callable[[Any], Optional[M]]:
    def convert(value: Any) -> Optional[M]:
        return None if value is None else cls.from_json(value)

    return convert


def _nested_list(cls: Type[M]) -> Callable[[Any], List[M]]:
    def convert(value: Any) -> List[M]:
        if not isinstance(value, list):
            return []
        return [cls.from_json(v) for v in value]

    return convert


class Model:
    """Base of every answer type: ``from_json`` picks the known fields, keeps the rest."""

    #: Fields whose JSON value is converted (nested objects and lists of them).
    _convert: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    @classmethod
    def from_json(cls: Type[M], data: Any) -> M:
        if not isinstance(data, dict):
            raise AgoraError(
                None, f"the node answered {data!r} where a {cls.__name__} object was expected"
            )
        known = {f.name for f in fields(cls)} - {"raw"}  # type: ignore[arg-type]
        kwargs: Dict[str, Any] = {}
        for name in known:
            if name in data:
                value = data[name]
                convert = cls._convert.get(name)
                kwargs[name] = convert(value) if convert is not None else value
        return cls(raw=data, **kwargs)  # type: ignore[call-arg]


@dataclass
class NodeStatus(Model):
    """``GET /v1/status``."""

    peer_id: str = ""
    listen_addresses: List[str] = field(default_factory=list)
    connected_peers: int = 0
    routing_table_size: int = 0
    uptime_secs: int = 0
    version: str = ""
    #: The price this node asks per execution.
    price: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Peer(Model):
    """One entry of ``GET /v1/peers``."""

    peer_id: str = ""
    addresses: List[str] = field(default_factory=list)
    rtt_ms: Optional[float] = None
    connected_since: int = 0
    agent: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Blob(Model):
    """``POST /v1/blobs``: the stored blob's hash and size."""

    hash: str = ""
    size: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class JobSummary(Model):
    """One entry of ``GET /v1/jobs`` (also ``JobStatus.summary``)."""

    id: str = ""
    #: ``awaiting_escrow``, ``bidding``, ``running``, ``verified`` or ``failed``.
    state: str = ""
    #: Why the job waits or failed, in one sentence; ``None`` when nothing holds it up.
    reason: Optional[str] = None
    redundancy: int = 0
    #: How many bids and results arrived.
    bids: int = 0
    results: int = 0
    #: The workers whose results formed the quorum.
    workers: List[str] = field(default_factory=list)
    output_hash: Optional[str] = None
    #: The program's agreed exit code, once a quorum agreed on a completed run.
    exit_code: Optional[int] = None
    created_ms: int = 0
    finished_ms: Optional[int] = None
    latency_ms: Optional[int] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_final(self) -> bool:
        """Whether the job is over (verified or failed)."""
        return self.state in FINAL_STATES


@dataclass
class JobStatus(Model):
    """``GET /v1/jobs/{id}``: the whole job record, with the reason it waits or failed.

    ``bids``, ``leases``, ``results`` and ``timeline`` are lists of the node's records as
    JSON objects (e.g. a lease has ``worker``, ``price``, ``status``; a result has ``worker``,
    ``verdict``, ``agreed``); ``outcome`` is the agreed outcome once decided
    (``{"Completed": {"exit_code": ..., "output_hash": ...}}`` or ``{"Failed": {...}}``).
    """

    id: str = ""
    state: str = ""
    reason: Optional[str] = None
    summary: Optional[JobSummary] = None
    #: The signed spec (module, input, limits, redundancy, max_price, ...), when the node
    #: shows it.
    spec: Optional[Dict[str, Any]] = None
    submitter: Optional[str] = None
    bids: List[Dict[str, Any]] = field(default_factory=list)
    leases: List[Dict[str, Any]] = field(default_factory=list)
    results: List[Dict[str, Any]] = field(default_factory=list)
    timeline: List[Dict[str, Any]] = field(default_factory=list)
    quorum: List[str] = field(default_factory=list)
    outcome: Optional[Dict[str, Any]] = None
    waiting: Any = None
    fail_reason: Any = None
    #: The program's agreed exit code, once a quorum agreed on a completed run; non-zero means
    #: the program reported failure although the job is ``verified``.
    exit_code: Optional[int] = None
    #: The first bytes of the program's stderr, from the first agreeing worker.
    stderr: Optional[str] = None
    announce_attempts: int = 0
    target_replicas: int = 0
    lease_failures: int = 0
    created_ms: int = 0
    #: When a worker first accepted a lease (the deadline's clock starts there).
    started_ms: Optional[int] = None
    finished_ms: Optional[int] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    _convert: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "summary": _nested(JobSummary)
    }

    @classmethod
    def from_json(cls, data: Any) -> "JobStatus":
        st = super().from_json(data)
        if st.exit_code is None:
            # Older nodes: from the summary, or the agreed outcome.
            completed = (st.outcome or {}).get("Completed")
            code = completed.get("exit_code") if isinstance(completed, dict) else None
            if st.summary is not None and st.summary.exit_code is not None:
                code = st.summary.exit_code
            st.exit_code = code if isinstance(code, int) else None
        return st

    @property
    def succeeded(self) -> bool:
        """Verified, and the program exited 0 (a verified job may report a non-zero exit)."""
        return self.verified and self.exit_code in (None, 0)

    @property
    def is_final(self) -> bool:
        """Whether the job is over (verified or failed)."""
        return self.state in FINAL_STATES

    @property
    def verified(self) -> bool:
        """Whether a quorum agreed on a completed output."""
        return self.state == "verified"

    def progress_line(self) -> str:
        """One line for people: ``running: 3 bids, 1 results - <reason>``."""
        s = self.summary
        bids = s.bids if s is not None else len(self.bids)
        results = s.results if s is not None else len(self.results)
        line = f"{self.state}: {bids} bids, {results} results"
        return f"{line} - {self.reason}" if self.reason else line


@dataclass
class Account(Model):
    """``GET /v1/wallet`` and ``GET /v1/ledger/accounts/{id}``."""

    id: str = ""
    balance: int = 0
    stake: int = 0
    unbonding: int = 0
    nonce: int = 0
    banned: bool = False
    #: Open escrows it owns, and the tokens in them.
    escrows: int = 0
    escrowed: int = 0
    can_bid: bool = False
    validator: bool = False
    #: Open credit lines to workers, and the tokens on them (``credit_per_worker``).
    credit_lines: int = 0
    credit_locked: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class HistoryEvent(Model):
    """One entry of ``GET /v1/wallet/history``: a ledger event at a height.

    ``event`` is the event object; its ``"event"`` key is its kind (``transferred``,
    ``staked``, ``paid``, ...), also available as ``kind``.
    """

    height: int = 0
    event: Dict[str, Any] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        value = self.event.get("event", "")
        return value if isinstance(value, str) else ""


@dataclass
class TxOutcome(Model):
    """The fate of a wallet transaction (transfer, stake, unstake)."""

    tx_id: str = ""
    kind: str = ""
    nonce: int = 0
    #: The height it landed at.
    height: int = 0
    #: Whether the ledger applied it; if not, ``error`` says why.
    applied: bool = False
    error: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Validator(Model):
    """A validator in ``LedgerStatus.validators``."""

    id: str = ""
    power: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Supply(Model):
    """Token totals in ``LedgerStatus.supply``."""

    circulating: int = 0
    expected: int = 0
    conserved: bool = False
    paid: int = 0
    slashed: int = 0
    minted: int = 0
    burned: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class LedgerStatus(Model):
    """``GET /v1/ledger/status``."""

    chain_id: str = ""
    height: int = 0
    state_root: str = ""
    last_block_ms: int = 0
    validators: List[Validator] = field(default_factory=list)
    mempool: int = 0
    supply: Optional[Supply] = None
    consensus_peers: int = 0
    open_escrows: int = 0
    settled_jobs: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    _convert: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "validators": _nested_list(Validator),
        "supply": _nested(Supply),
    }


@dataclass
class PriceRange(Model):
    """The lowest, median and highest of a set of prices, in tokens."""

    min: int = 0
    median: int = 0
    max: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Estimate(Model):
    """``GET /v1/jobs/estimate``: what a job would cost if submitted now."""

    redundancy: int = 0
    max_price: int = 0
    #: Workers whose capability ad is fresh; of those, capable; of those, affordable; free now.
    known_workers: int = 0
    capable: int = 0
    affordable: int = 0
    free: int = 0
    cheapest_capable: Optional[int] = None
    #: One execution's price among affordable workers (``None`` when none is known).
    price_per_replica: Optional[PriceRange] = None
    #: What ``redundancy`` executions would cost (``None`` when too few workers are known).
    total: Optional[PriceRange] = None
    #: The escrow a submit would lock (the unused part is refunded at settlement).
    escrow: int = 0
    balance: Optional[int] = None
    can_run: bool = False
    #: Why the job could not run now, or what would hold it up.
    reason: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    _convert: ClassVar[Mapping[str, Callable[[Any], Any]]] = {
        "price_per_replica": _nested(PriceRange),
        "total": _nested(PriceRange),
    }
