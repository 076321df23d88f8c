"""Finding a node's API token, in the same order as the ``agora`` CLI.

A node writes a fresh token each time it starts, to ``<data_dir>/api.token`` and to
``<default data dir>/api/<ip>_<port>.token`` for the address its API is bound to. A client
looks, in order, at:

1. the ``AGORA_API_TOKEN`` environment variable;
2. ``<default data dir>/api/<ip>_<port>.token`` for the address it targets (``localhost`` is
   read as ``127.0.0.1``; an IPv6 address is written without brackets, ``:`` as ``_``, so
   ``[::1]:7460`` is ``__1_7460``);
3. for a loopback target only: the per-address files of a node bound to every address
   (``0.0.0.0_<port>.token``, ``___<port>.token``), then
   ``<AGORA_DATA_DIR or default data dir>/api.token``.

The default data dir is ``$XDG_DATA_HOME/agora``, or ``~/.local/share/agora``.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import List, Optional, Tuple
from urllib.parse import urlsplit


def default_data_dir() -> Path:
    """The node's default data directory (as ``agora_node::config::default_data_dir``)."""
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg is not None:
        return Path(xdg) / "agora"
    home = os.environ.get("HOME")
    if home is not None:
        return Path(home) / ".local" / "share" / "agora"
    return Path("agora-data")


def split_api(api: str) -> Tuple[str, str, int]:
    """``"127.0.0.1:7460"`` or ``"http://[::1]:7460/"`` -> (scheme, host, port)."""
    text = api.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{api!r} has an invalid port: {e}") from None
    if not host:
        raise ValueError(f"{api!r} names no host: give HOST:PORT, e.g. 127.0.0.1:7460")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return parts.scheme, host, port


def address_file_name(api: str) -> Optional[str]:
    """The ``<ip>_<port>.token`` name for an API address, or ``None`` for a host name
    other than ``localhost`` (whose bound address the client cannot know)."""
    _, host, port = split_api(api)
    if host.lower() == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return f"{str(ip).replace(':', '_')}_{port}.token"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback IP."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def candidate_files(api: str) -> List[Path]:
    """The token files a client reads for ``api``, in order.

    The data dir's ``api.token`` (3.) names no address, so it is only read for a loopback
    target: a local node's token is never sent to another host by accident.
    """
    files: List[Path] = []
    name = address_file_name(api)
    if name is not None:
        files.append(default_data_dir() / "api" / name)
    _, host, port = split_api(api)
    if is_loopback(host):
        # A node on this machine bound to every address (0.0.0.0, [::]) is reached through
        # loopback too; its file names the address it is bound to (as the CLI reads them).
        for any_ip in ("0.0.0.0", "__"):
            files.append(default_data_dir() / "api" / f"{any_ip}_{port}.token")
        data_dir = os.environ.get("AGORA_DATA_DIR")
        base = Path(data_dir) if data_dir else default_data_dir()
        files.append(base / "api.token")
    return files


def _read(path: Path) -> Optional[str]:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def find_token(api: str) -> Optional[str]:
    """The token for ``api`` (env var first, then the files), or ``None`` if none is found."""
    env = os.environ.get("AGORA_API_TOKEN", "").strip()
    if env:
        return env
    for path in candidate_files(api):
        token = _read(path)
        if token is not None:
            return token
    return None
