"""The one exception the SDK raises."""

from __future__ import annotations

from typing import Optional


class AgoraError(Exception):
    """A request to an Agora node failed.

    ``status`` is the HTTP status code the node answered with (``401`` for a missing or wrong
    API token, ``404`` for an unknown job, ...), or ``None`` when no answer came back (the node
    is not running, a timeout, a file that cannot be read). ``message`` is the node's own
    explanation from its ``{"error": ...}`` body, which says what was wrong and how to fix it.
    """

    def __init__(self, status: Optional[int], message: str) -> None:
        self.status: Optional[int] = status
        self.message: str = message
        super().__init__(message if status is None else f"HTTP {status}: {message}")
