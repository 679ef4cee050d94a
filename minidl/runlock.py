"""One run per output directory: :class:`RunLock`.

Two runs writing the same directory would overwrite each other's files and
could leave a checkpoint and weights from different runs side by side. A run
holds an exclusive ``flock`` on ``<out>/.run.lock`` while it trains and
writes who it is there (pid, host, start time, command). A second run is
refused with :class:`RunLocked` naming the first. The kernel drops the
lock when its process ends, however it ends, so a run killed with
``kill -9`` leaves no lock behind, only its note in the file: the next run
takes over and says so. A run that finishes empties the file.

Without ``fcntl`` (Windows) the lock is the file itself, created
exclusively; a note whose pid no longer runs on this host is stale.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import sys

try:
    import fcntl
except ImportError:   # Windows: the exclusive-create fallback
    fcntl = None

LOCK_NAME = ".run.lock"


class RunLocked(RuntimeError):
    """Another live run holds the output directory."""


def _describe(owner):
    if not isinstance(owner, dict):
        return "an unknown run"
    return (f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}"
            f" ({owner.get('command')})")


def _pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(out, log=print):`` holds ``out`` for this process.

    ``took_over`` is the note of a run that ended without releasing the
    directory (killed), when there was one."""

    def __init__(self, directory, log=None):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK_NAME)
        self.log = log
        self.fd = None
        self.took_over = None

    def _note(self):
        return json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python")] + sys.argv[1:])})

    def _read(self, fd):
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 1 << 16).decode("utf-8", "replace").strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return {"command": text[:200]}

    def _write(self, fd):
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, self._note().encode())
        os.fsync(fd)

    def acquire(self):
        if fcntl is None:
            return self._acquire_exclusive()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._read(fd)
            os.close(fd)
            raise RunLocked(f"{self.directory} is in use by another run ({_describe(owner)}); "
                            "wait for it to finish or choose another output directory") from None
        self._take(fd, self._read(fd))
        return self

    def _acquire_exclusive(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                with open(self.path, "rb") as f:
                    text = f.read().decode("utf-8", "replace").strip()
                owner = json.loads(text) if text.startswith("{") else None
                if owner and owner.get("host") == socket.gethostname() and \
                        not _pid_alive(owner.get("pid")):
                    os.unlink(self.path)   # its process is gone: stale
                    self.took_over = owner
                    continue
                raise RunLocked(f"{self.directory} is in use by another run "
                                f"({_describe(owner)}); wait for it to finish or choose "
                                "another output directory") from None
            self._take(fd, self.took_over)
            return self
        raise RunLocked(f"{self.directory}: could not take the run lock {self.path}")

    def _take(self, fd, previous):
        self.fd, self.took_over = fd, previous
        if previous is not None and self.log is not None:
            self.log(f"Note: {self.directory} was held by a run that ended without releasing "
                     f"it ({_describe(previous)}); taking it over")
        self._write(fd)

    def release(self):
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)   # a clean end: no note for the next run to report
        finally:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
            if fcntl is None:
                os.unlink(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
