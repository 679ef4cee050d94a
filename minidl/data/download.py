"""Fetch a file from a list of mirrors, verified by SHA-256.

Each mirror is tried in turn; the body streams into a hidden temporary file
beside the destination while it is hashed, and only a file whose hash
matches (and that passes the caller's ``check``) is renamed into place. A
mirror that answers with an HTML error page, a truncated body or a 404 is
recorded and the next one is tried; when all fail, :class:`DownloadError`
lists every URL with what went wrong.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from .files import DataError, temp_path

USER_AGENT = "minidl-data/0.1 (+https://github.com/; python-urllib)"
TIMEOUT = 30.0          # seconds without data before a mirror is given up
MAX_BYTES = 256 << 20   # a mirror sending more than this is not sending MNIST
CHUNK = 1 << 16


class DownloadError(DataError):
    """No mirror gave a verified file; ``attempts`` holds (url, reason)."""

    def __init__(self, message, attempts=()):
        super().__init__(message)
        self.attempts = list(attempts)


def _progress_bar(total, desc, enabled):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True,
                unit_divisor=1024, leave=False, disable=not enabled)


def _fetch(url, dest, timeout, progress, max_bytes):
    """Stream ``url`` into ``dest``; return the SHA-256 and size of the body."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    digest, size = hashlib.sha256(), 0
    with urllib.request.urlopen(request, timeout=timeout) as response, \
            open(dest, "wb") as out:
        total = response.headers.get("Content-Length")
        total = int(total) if total and total.isdigit() else None
        if total is not None and total > max_bytes:
            raise DataError(f"{total} bytes announced, more than the {max_bytes} allowed")
        bar = _progress_bar(total, Path(url).name, progress)
        try:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise DataError(f"more than the {max_bytes} bytes allowed")
                digest.update(chunk)
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and size != total:
            raise DataError(f"connection closed after {size} of {total} bytes")
    return digest.hexdigest(), size


def _looks_like_html(path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head"))


def download(filename, mirrors, sha256, dest_dir, *, check=None,
             timeout=TIMEOUT, progress=True, max_bytes=MAX_BYTES) -> Path:
    """Fetch ``filename`` from the first mirror whose copy is verified.

    ``mirrors`` are base URLs (``filename`` is appended); ``sha256`` the
    expected hex digest of the file as served; ``check(path, name)``, when
    given, must raise on a file whose content is invalid (``name`` is the URL,
    for its message). The verified file ends up at ``dest_dir/filename``;
    nothing else is left behind.
    """
    dest = Path(dest_dir) / filename
    attempts = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        try:
            tmp = temp_path(dest)
        except OSError as exc:   # a read-only or full data directory: no mirror can help
            attempts.append((url, f"not fetched: cannot write into {dest.parent}: "
                                  f"{type(exc).__name__}: {exc}"))
            break
        try:
            digest, size = _fetch(url, tmp, timeout, progress, max_bytes)
            if digest != sha256:
                html = " (an HTML page, not the file)" if _looks_like_html(tmp) else ""
                raise DataError(f"SHA-256 mismatch: got {digest} for {size} bytes"
                                f"{html}, expected {sha256}")
            if check is not None:
                check(tmp, url)
            os.replace(tmp, dest)
            return dest
        except urllib.error.HTTPError as exc:
            attempts.append((url, f"HTTP {exc.code} {exc.reason}"))
        except urllib.error.URLError as exc:
            attempts.append((url, f"unreachable: {exc.reason}"))
        except DataError as exc:
            attempts.append((url, str(exc)))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            # timeouts, resets, IDXError from ``check``
            attempts.append((url, f"{type(exc).__name__}: {exc}"))
        finally:
            tmp.unlink(missing_ok=True)
    tried = "\n".join(f"  - {url}: {why}" for url, why in attempts) or "  (no mirrors given)"
    raise DownloadError(f"could not download {filename}; tried:\n{tried}", attempts)
