"""Atomic file writes: readers see the old file or the whole new one, never a part.

Used by every file minidl writes: checkpoints, metrics, the dataset cache.

A write goes to a hidden temporary file beside the target,
``.{name}.{host}-{pid}.{random}.part``, then ``os.replace``. A writer killed
between the two (``kill -9``, power loss) leaves its ``.part`` file behind;
the next write to the same target removes such leftovers: those that this
host's processes wrote and whose process is gone (so no live writer can own
them), and, from other hosts or older minidl versions, those untouched for a
day.
"""
from __future__ import annotations

import glob
import os
import secrets
import socket
import time
from pathlib import Path

STALE_FOREIGN_SECONDS = 24 * 3600


def _host():
    # no '.' or '-' inside the tag: they separate the name's fields
    return "".join(c for c in socket.gethostname() if c.isalnum())[:32] or "host"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's live process
        return True
    return True


def _is_stale(part, host, now):
    """Whether the leftover ``part`` can belong to no live writer."""
    fields = part.name[:-len(".part")].rsplit(".", 2)
    owner = fields[1] if len(fields) == 3 else ""
    part_host, _, pid = owner.rpartition("-")
    if part_host == host and pid.isdigit():
        return int(pid) != os.getpid() and not _pid_alive(int(pid))
    try:
        return now - part.stat().st_mtime > STALE_FOREIGN_SECONDS
    except FileNotFoundError:
        return False


def clean_stale_parts(path) -> list:
    """Remove the leftover temporary files of writes to ``path`` that were killed
    (see the module docstring); returns the paths removed."""
    path = Path(path)
    host, now, removed = _host(), time.time(), []
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.part"))
    except OSError:
        return removed
    for part in candidates:
        if _is_stale(part, host, now):
            try:
                part.unlink()
                removed.append(part)
            except OSError:   # gone already, or not ours to remove: leave it
                pass
    return removed


def file_in_the_way(directory) -> Path:
    """The file (not a directory) at ``directory`` or one of its parents, which
    keeps it from being made; ``directory`` itself when none is found."""
    directory = Path(directory)
    for p in [*reversed(directory.parents), directory]:
        if p.exists() and not p.is_dir():
            return p
    return directory


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f"cannot write {path}: {file_in_the_way(path.parent)} is a "
                                 "file, not a directory") from None


def temp_path(path) -> Path:
    """A fresh hidden temporary file beside ``path`` (same file system, so
    ``os.replace`` onto ``path`` is atomic)."""
    path = Path(path)
    _make_parent(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    clean_stale_parts(path)
    owner = f"{_host()}-{os.getpid()}"
    while True:   # created exclusively, with the umask's usual permissions
        tmp = path.parent / f".{path.name}.{owner}.{secrets.token_hex(4)}.part"
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
