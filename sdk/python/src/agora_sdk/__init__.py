"""Python client for an Agora node's HTTP API.

Example::

    from agora_sdk import Client

    node = Client()                      # 127.0.0.1:7460, token found like the CLI finds it
    job = node.submit("examples/wasm/primes.wasm", input="1000000\\n")
    print(node.wait(job, progress=True).state)   # verified
    print(node.output(job))                      # b'primes(1000000) = 78498\\n'

Standard library only; every failure raises :class:`AgoraError`.
"""

from .client import Client
from .errors import AgoraError
from .token import default_data_dir, find_token
from .types import (
    FINAL_STATES,
    Account,
    Blob,
    Estimate,
    HistoryEvent,
    JobStatus,
    JobSummary,
    LedgerStatus,
    NodeStatus,
    Peer,
    PriceRange,
    Supply,
    TxOutcome,
    Validator,
)

__version__ = "0.1.0"

__all__ = [
    "FINAL_STATES",
    "Account",
    "AgoraError",
    "Blob",
    "Client",
    "Estimate",
    "HistoryEvent",
    "JobStatus",
    "JobSummary",
    "LedgerStatus",
    "NodeStatus",
    "Peer",
    "PriceRange",
    "Supply",
    "TxOutcome",
    "Validator",
    "__version__",
    "default_data_dir",
    "find_token",
]
