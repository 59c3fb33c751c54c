"""A disk cache of compiled objects, safe for concurrent processes without a lock.

An entry is `<key>.o` holding a header line (magic and SHA-256 of the payload) and the object
code. Writers write a private temporary file and `os.replace` it into place (atomic on POSIX), so
readers see a whole old entry, a whole new one, or none; a reader that finds a damaged entry
(checksum mismatch, truncation) treats it as a miss and the rebuilt object replaces it.
Location: $GRAPHNET_CACHE_DIR, else ~/.cache/graphnet.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

_MAGIC = b"graphnet-object-1"


def cache_dir() -> str:
    return os.environ.get("GRAPHNET_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "graphnet")


def cache_key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def entry_path(key: str) -> str:
    return os.path.join(cache_dir(), key[:2], key + ".o")


def load(key: str) -> bytes | None:
    """The cached object for `key`, or None if absent or damaged."""
    try:
        with open(entry_path(key), "rb") as f:
            data = f.read()
    except OSError:
        return None
    header, _, payload = data.partition(b"\n")
    if header != _MAGIC + b" " + hashlib.sha256(payload).hexdigest().encode():
        return None
    return payload


def store(key: str, payload: bytes) -> None:
    """Write an entry atomically; a failure to write (read-only disk, full disk) is not an error."""
    path = entry_path(key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + b" " + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass
