"""Atomic file writes: readers see the old file or the whole new one, never a part.

Used by every file minidl writes: checkpoints, metrics, the dataset cache.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def temp_path(path) -> Path:
    """A fresh hidden temporary file beside ``path`` (same file system, so
    ``os.replace`` onto ``path`` is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:   # created exclusively, with the umask's usual permissions
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.part"
        try:
            with open(tmp, "xb"):
                return tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the
    whole new one, never a partial one (temp file + ``os.replace``)."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
