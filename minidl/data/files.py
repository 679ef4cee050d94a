"""Small file helpers shared by the data sources: root and hashing (atomic writes
live in :mod:`minidl.fileio`)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..fileio import atomic_write_bytes, temp_path  # noqa: F401 - the data sources' API


class DataError(RuntimeError):
    """Data could not be found, fetched or verified; the message says why
    and what to do."""


def default_root() -> Path:
    """``$MINIDL_DATA`` or ``~/.cache/minidl``: where datasets live."""
    return Path(os.environ.get("MINIDL_DATA") or "~/.cache/minidl").expanduser()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
